"""
The model profile the scheduler reads: stage latencies and calibration tables (JSON).

Written by ``anytime-infer calibrate`` beside the weights; validated here so that a bad
profile (zero or negative latencies, tables of the wrong shape) is refused, not planned on.
"""
from dataclasses import dataclass
import json
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

QUANTILE_LEVELS = [i / 20 for i in range(21)]   # 0, 0.05, ..., 1.0 of the latency samples


class ProfileError(ValueError):
    """A profile that cannot be planned on."""


@dataclass
class LatencyStats:
    """Latency of one stage at one batch size, in seconds."""

    p50: float
    p95: float
    p99: float
    mean: float
    quantiles: List[float]         # at QUANTILE_LEVELS

    def sample(self, rng: np.random.Generator, size: Optional[int] = None):
        """Draw from the measured distribution (inverse CDF through the quantiles)."""
        return np.interp(rng.random(size), QUANTILE_LEVELS, self.quantiles)


@dataclass
class ModelProfile:
    """What the scheduler knows of a model: stage latencies and exit calibration."""

    name: str
    num_stages: int
    latency: List[Dict[int, LatencyStats]]     # [stage - 1][batch] -> stats
    exit_accuracy: List[float]                 # mean accuracy of every exit (validation)
    conf_edges: List[List[float]]              # [k - 1] -> bin edges of exit k's confidence
    cond_accuracy: List[List[List[float]]]     # [k - 1][l - 1][bin]: P(exit l ok | bin of k)
    device: str = 'cpu'

    def stage_mean(self, stage: int, batch: int = 1) -> float:
        """Mean latency (s) of a stage at a batch size."""
        return self.latency[stage - 1][batch].mean

    def full_depth_mean(self) -> float:
        """Mean time (s) to run every stage of one input."""
        return sum(self.stage_mean(k) for k in range(1, self.num_stages + 1))


def _stats_from(d: Dict, where: str) -> LatencyStats:
    keys = ('p50', 'p95', 'p99', 'mean')
    vals = {}
    for k in keys:
        v = d.get(k + '_ms')
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ProfileError(f'{where}: {k}_ms must be a positive number, not {v!r}')
        vals[k] = v / 1000.0
    q = d.get('quantiles_ms') or [vals['p50']] * len(QUANTILE_LEVELS)
    q = [x / 1000.0 for x in q] if 'quantiles_ms' in d else q
    if len(q) != len(QUANTILE_LEVELS) or any((not math.isfinite(x)) or x <= 0 for x in q):
        raise ProfileError(f'{where}: quantiles_ms must be {len(QUANTILE_LEVELS)} positive '
                           'numbers')
    return LatencyStats(vals['p50'], vals['p95'], vals['p99'], vals['mean'], sorted(q))


def profile_from_dict(d: Dict, name: str = '') -> ModelProfile:
    """Validate and convert a profile dict (as in profile.json)."""
    try:
        n = int(d['num_stages'])
        lat = d['latency']
        acc = [float(a) for a in d['exit_accuracy']]
        edges = d['conf_edges']
        cond = d['cond_accuracy']
    except (KeyError, TypeError, ValueError) as e:
        raise ProfileError(f'profile {name}: missing or malformed field ({e})') from None
    if n < 1 or len(lat) != n or len(acc) != n or len(edges) != n or len(cond) != n:
        raise ProfileError(f'profile {name}: tables do not match num_stages={n}')
    latency = []
    for k, per_batch in enumerate(lat, start=1):
        if '1' not in per_batch:
            raise ProfileError(f'profile {name}: stage {k} has no batch-1 latency')
        latency.append({int(b): _stats_from(s, f'profile {name} stage {k} batch {b}')
                        for b, s in per_batch.items()})
    for k in range(n):
        if len(cond[k]) != n or any(len(cond[k][j]) != len(edges[k]) - 1 for j in range(k, n)):
            raise ProfileError(f'profile {name}: cond_accuracy[{k + 1}] has the wrong shape')
    if any(not 0 <= a <= 1 for a in acc):
        raise ProfileError(f'profile {name}: exit accuracies must lie in 0..1')
    return ModelProfile(name or d.get('model', ''), n, latency, acc, edges, cond,
                        d.get('device', 'cpu'))


def load_profile(path: str) -> ModelProfile:
    """Read and validate a profile.json."""
    try:
        with open(path, encoding='utf-8') as f:
            d = json.load(f)
    except FileNotFoundError:
        raise ProfileError(f'{path}: profile is missing (run anytime-infer calibrate)') from None
    except json.JSONDecodeError as e:
        raise ProfileError(f'{path}: profile is not valid JSON ({e})') from None
    return profile_from_dict(d, name=path)


def synthetic_latency(stage_ms: Sequence[float], spread: float = 0.08) -> List[Dict]:
    """Latency entries for ``--stage-ms`` (means only): lognormal with a small spread."""
    from statistics import NormalDist
    out = []
    for m in stage_ms:
        if not m > 0:
            raise ProfileError(f'stage latency must be positive, not {m!r}')
        mu = math.log(m) - spread ** 2 / 2
        q = [math.exp(mu + spread * NormalDist().inv_cdf(min(max(p, 0.001), 0.999)))
             for p in QUANTILE_LEVELS]
        stat = {'p50_ms': math.exp(mu), 'p95_ms': math.exp(mu + 1.645 * spread),
                'p99_ms': math.exp(mu + 2.326 * spread), 'mean_ms': m, 'quantiles_ms': q}
        out.append({'1': stat})
    return out
