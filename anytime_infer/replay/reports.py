"""
Replay reports: per-frame outcome rows summed up per camera and in total, and the files.

A row is one image message of the bag: ``camera`` (index), ``outcome`` (on_time, late,
dropped), ``reason`` (why dropped), ``depth``, ``correct`` (on time and right against the
ground truth), ``latency_ms`` (None when dropped) and ``t`` (bag time in s from the first
frame). ``write_outputs`` writes ``report.json``, ``report.md``, ``frames.csv.gz`` (the
rows, for frame-by-frame diffs and fleet totals) and ``replay.png``.
"""
import csv
import gzip
import io
import json
import os
from typing import Dict, List, Sequence

from anytime_infer.replay.bags import BagContents, camera_of
import numpy as np

FRAMES_FILE = 'frames.csv.gz'
FRAME_COLUMNS = ('camera', 't', 'outcome', 'reason', 'depth', 'correct', 'latency_ms')


def _percentiles(ms: List[float]) -> Dict:
    if not ms:
        return {'latency_ms_p50': None, 'latency_ms_p95': None, 'latency_ms_p99': None}
    a = np.array(ms)
    return {f'latency_ms_p{q}': round(float(np.percentile(a, q)), 4) for q in (50, 95, 99)}


def summarise(rows: List[Dict], has_gt: bool) -> Dict:
    """Sum up counts, accuracy, depth and latency of per-frame outcome rows."""
    n = len(rows)
    dropped: Dict[str, int] = {}
    for r in rows:
        if r['outcome'] == 'dropped':
            dropped[r['reason']] = dropped.get(r['reason'], 0) + 1
    depths = [r['depth'] for r in rows if r['outcome'] in ('on_time', 'late')]
    out = {'frames_in': n,
           'on_time': sum(r['outcome'] == 'on_time' for r in rows),
           'late': sum(r['outcome'] == 'late' for r in rows),
           'dropped': dropped,
           'accuracy': (round(sum(r['correct'] for r in rows) / n, 6) if n else None)
           if has_gt else None,
           'mean_depth': round(float(np.mean(depths)), 6) if depths else 0.0,
           'depth_histogram': [int(x) for x in np.bincount(depths)[1:]] if depths else []}
    out.update(_percentiles([r['latency_ms'] for r in rows if r['latency_ms'] is not None]))
    return out


def report(bag: str, mode: str, policy: str, contents: BagContents, rows: List[Dict],
           extra_errors: Sequence[str] = ()) -> Dict:
    """Build the report: per camera and in total, plus completeness and errors."""
    per = {}
    for i, t in enumerate(contents.topics):
        per[t] = summarise([r for r in rows if r['camera'] == i], contents.has_ground_truth)
    errors = list(contents.errors) + list(extra_errors)
    return {'bag': os.path.abspath(bag), 'mode': mode, 'policy': policy,
            'complete': not errors, 'errors': errors,
            'ground_truth': contents.has_ground_truth,
            'total': summarise(rows, contents.has_ground_truth), 'cameras': per}


def write_outputs(out_dir: str, rep: Dict, rows: List[Dict]) -> List[str]:
    """Write report.json, report.md and the plots."""
    os.makedirs(out_dir, exist_ok=True)
    files = []
    path = os.path.join(out_dir, 'report.json')
    with open(path, 'w') as f:
        json.dump(rep, f, indent=1, sort_keys=True)
        f.write('\n')
    files.append(path)
    path = os.path.join(out_dir, 'report.md')
    with open(path, 'w') as f:
        f.write(report_markdown([rep]))
    files.append(path)
    files.append(write_frames(os.path.join(out_dir, FRAMES_FILE), rows))
    files += plot_replay(out_dir, rep, rows)
    return files


def write_error_report(out_dir: str, bag: str, mode: str, policy: str, error: str) -> str:
    """Write report.json of a bag that could not be read at all."""
    os.makedirs(out_dir, exist_ok=True)
    rep = {'bag': os.path.abspath(bag), 'complete': False, 'errors': [error], 'mode': mode,
           'policy': policy}
    path = os.path.join(out_dir, 'report.json')
    with open(path, 'w') as f:
        json.dump(rep, f, indent=1, sort_keys=True)
        f.write('\n')
    return path


def write_frames(path: str, rows: List[Dict]) -> str:
    """Write the rows as gzip'd CSV; the same rows give the same bytes (no gzip mtime)."""
    text = io.StringIO()
    w = csv.writer(text, lineterminator='\n')
    w.writerow(FRAME_COLUMNS)
    for r in rows:
        lat = r['latency_ms']
        w.writerow([r['camera'], '' if r.get('t') is None else repr(float(r['t'])),
                    r['outcome'], r['reason'], int(r['depth']), int(bool(r['correct'])),
                    '' if lat is None else repr(float(lat))])
    with open(path, 'wb') as f, gzip.GzipFile(filename='', mode='wb', fileobj=f,
                                              mtime=0) as z:
        z.write(text.getvalue().encode())
    return path


def read_frames(path: str) -> List[Dict]:
    """Read the rows written by ``write_frames``."""
    with gzip.open(path, 'rt', newline='') as f:
        return [{'camera': int(r['camera']), 't': float(r['t']) if r['t'] else None,
                 'outcome': r['outcome'], 'reason': r['reason'], 'depth': int(r['depth']),
                 'correct': r['correct'] == '1',
                 'latency_ms': float(r['latency_ms']) if r['latency_ms'] else None}
                for r in csv.DictReader(f)]


def report_markdown(reps: List[Dict]) -> str:
    """Tabulate reports: one row per policy and camera (policies side by side)."""
    lines = [f'# replay of {reps[0]["bag"]} ({reps[0]["mode"]})', '',
             '| policy | camera | frames_in | on_time | late | dropped | accuracy | '
             'mean_depth | latency p50 / p95 / p99 ms |', '|---|---|---|---|---|---|---|---|---|']
    for rep in reps:
        for cam, s in list(rep['cameras'].items()) + [('total', rep['total'])]:
            acc = '' if s['accuracy'] is None else f'{s["accuracy"]:.3f}'
            lat = ' / '.join('-' if s[f'latency_ms_p{q}'] is None else
                             f'{s[f"latency_ms_p{q}"]:.1f}' for q in (50, 95, 99))
            lines.append(f'| {rep["policy"]} | {cam} | {s["frames_in"]} | {s["on_time"]} | '
                         f'{s["late"]} | {s["dropped"] or 0} | {acc} | '
                         f'{s["mean_depth"]:.2f} | {lat} |')
        if not rep['complete']:
            lines.append(f'\nINCOMPLETE ({rep["policy"]}): ' + '; '.join(rep['errors']))
    return '\n'.join(lines) + '\n'


def plot_replay(out_dir: str, rep: Dict, rows: List[Dict]) -> List[str]:
    """Outcomes per camera, accuracy and depth over time, latency histogram."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    cams = list(rep['cameras'])
    kinds = ['on_time', 'late', 'dropped']
    bottom = np.zeros(len(cams))
    for kind in kinds:
        vals = np.array([rep['cameras'][c][kind] if kind != 'dropped' else
                         sum(rep['cameras'][c]['dropped'].values()) for c in cams], float)
        axes[0].bar(range(len(cams)), vals, bottom=bottom, label=kind)
        bottom += vals
    axes[0].set_xticks(range(len(cams)), [camera_of(c) for c in cams], fontsize=7)
    axes[0].set_title('outcomes per camera')
    axes[0].legend(fontsize=7)
    ts = np.array([r.get('t', 0.0) for r in rows])
    if len(rows):
        bins = np.linspace(ts.min(), ts.max() + 1e-9, 21)
        idx = np.digitize(ts, bins) - 1
        acc = [np.mean([r['correct'] for r, i in zip(rows, idx) if i == b] or [np.nan])
               for b in range(20)]
        dep = [np.mean([r['depth'] for r, i in zip(rows, idx) if i == b and r['depth']]
                       or [np.nan]) for b in range(20)]
        centers = (bins[:-1] + bins[1:]) / 2
        axes[1].plot(centers, acc, marker='o', label='accuracy')
        ax2 = axes[1].twinx()
        ax2.plot(centers, dep, color='tab:orange', marker='s', label='mean depth')
        ax2.set_ylabel('mean depth')
        axes[1].set_xlabel('bag time (s)')
        axes[1].set_title('accuracy and depth over time')
    lat = [r['latency_ms'] for r in rows if r['latency_ms'] is not None]
    axes[2].hist(lat, bins=30)
    axes[2].set_xlabel('latency (ms)')
    axes[2].set_title('latency histogram')
    fig.tight_layout()
    path = os.path.join(out_dir, 'replay.png')
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return [path]
