"""
Trace files: per test image and exit, what the exit predicted and how confident it was.

CSV with the header ``sample,label,exit,predicted,confidence``: one row per sample and
exit, exits numbered from 1, confidence the calibrated probability of ``predicted``.
Labels and predictions are class names or ids (compared as strings).
"""
import csv
from dataclasses import dataclass
import gzip
import math
from typing import List

import numpy as np

HEADER = ['sample', 'label', 'exit', 'predicted', 'confidence']


class TraceError(ValueError):
    """A trace file that cannot be used."""


@dataclass
class Trace:
    """Arrays (samples x exits): confidence and correctness of every exit."""

    samples: List[str]
    confidence: np.ndarray       # float, (n, L)
    correct: np.ndarray          # bool, (n, L)

    @property
    def num_exits(self) -> int:
        """Return the number of exits (stages)."""
        return self.confidence.shape[1]

    def accuracy(self) -> np.ndarray:
        """Mean accuracy of every exit."""
        return self.correct.mean(axis=0)

    def subset(self, idx: np.ndarray) -> 'Trace':
        """Restrict the trace to some samples."""
        return Trace([self.samples[i] for i in idx], self.confidence[idx], self.correct[idx])


def read_trace(path: str) -> Trace:
    """Read and validate a trace CSV; every sample must have every exit exactly once."""
    rows = {}
    exits = set()
    try:
        opener = gzip.open if path.endswith('.gz') else open
        with opener(path, 'rt', newline='', encoding='utf-8') as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or \
                    [h.strip() for h in reader.fieldnames[:5]] != HEADER:
                raise TraceError(f'{path}: header must be {",".join(HEADER)}')
            for line, r in enumerate(reader, start=2):
                try:
                    e = int(r['exit'])
                    c = float(r['confidence'])
                except (TypeError, ValueError):
                    raise TraceError(f'{path}:{line}: exit must be an integer and '
                                     'confidence a number') from None
                if e < 1:
                    raise TraceError(f'{path}:{line}: exits are numbered from 1')
                if math.isfinite(c) and not 0.0 <= c <= 1.0:
                    raise TraceError(f'{path}:{line}: confidence {c} outside 0..1')
                key = r['sample']
                per = rows.setdefault(key, {})
                if e in per:
                    raise TraceError(f'{path}:{line}: sample {key} exit {e} appears twice')
                per[e] = (c, r['predicted'].strip() == r['label'].strip())
                exits.add(e)
    except FileNotFoundError:
        raise TraceError(f'{path}: trace file not found') from None
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise TraceError(f'{path}: not a readable CSV trace ({e})') from None
    if not rows:
        raise TraceError(f'{path}: no rows')
    n_exits = max(exits)
    if sorted(exits) != list(range(1, n_exits + 1)):
        raise TraceError(f'{path}: exits must be 1..{n_exits} without gaps')
    samples = list(rows)
    conf = np.full((len(samples), n_exits), np.nan)
    ok = np.zeros((len(samples), n_exits), dtype=bool)
    for i, s in enumerate(samples):
        per = rows[s]
        if len(per) != n_exits:
            raise TraceError(f'{path}: sample {s} has {len(per)} of {n_exits} exits')
        for e, (c, good) in per.items():
            conf[i, e - 1] = c
            ok[i, e - 1] = good
    return Trace(samples, conf, ok)


def write_trace(path: str, samples, labels, predicted, confidence) -> None:
    """Write a trace: predicted/confidence are (n, L) arrays, labels (n,)."""
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'wt', newline='', encoding='utf-8') as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i, s in enumerate(samples):
            for e in range(predicted.shape[1]):
                w.writerow([s, labels[i], e + 1, predicted[i, e], f'{confidence[i, e]:.6f}'])


def tables_from_trace(trace: Trace, bins: int = 10):
    """
    Calibration tables (equal-mass confidence bins) from a trace's own rows.

    Used for traces from elsewhere (``--trace``), on a held-out half of the samples.
    Returns (exit_accuracy, conf_edges, cond_accuracy) in the profile's layout.
    """
    conf, ok = trace.confidence, trace.correct
    n_exits = trace.num_exits
    acc = ok.mean(axis=0)
    edges_all, cond_all = [], []
    for k in range(n_exits):
        c = np.nan_to_num(conf[:, k], nan=0.0)
        edges, b = confidence_bins(c, bins)
        per_l = []
        for lvl in range(n_exits):
            if lvl < k:
                per_l.append([])
                continue
            per_l.append(smoothed_bin_rates(ok[:, lvl], b, len(edges) - 1, acc[lvl]))
        edges_all.append([float(e) for e in edges])
        cond_all.append(per_l)
    return [float(a) for a in acc], edges_all, cond_all


def confidence_bins(conf: np.ndarray, bins: int):
    """Return (equal-mass edges, each confidence's bin index) of one exit's confidences."""
    edges = conditional_edges(conf, bins)
    return edges, np.clip(np.searchsorted(edges, conf, side='right') - 1, 0, len(edges) - 2)


def conditional_edges(conf: np.ndarray, bins: int) -> np.ndarray:
    """Equal-mass bin edges over [0, 1] (duplicates removed)."""
    qs = np.quantile(conf, np.linspace(0, 1, bins + 1)[1:-1]) if len(conf) else []
    edges = np.unique(np.concatenate([[0.0], qs, [1.0 + 1e-9]]))
    return edges


def smoothed_bin_rates(ok: np.ndarray, bin_idx: np.ndarray, nbins: int, prior: float,
                       strength: float = 4.0) -> List[float]:
    """Per-bin success rates, shrunk toward ``prior`` (a Beta prior of ``strength`` counts)."""
    hits = np.bincount(bin_idx, weights=ok.astype(float), minlength=nbins)
    counts = np.bincount(bin_idx, minlength=nbins)
    return [float(x) for x in (hits + strength * prior) / (counts + strength)]
