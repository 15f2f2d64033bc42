"""
The fleet summary of ``evaluate``: per bag and in total, per policy; markdown and plots.

Built only from what the bag folders hold (``report.json``; ``job.json`` with each bag's
counts, made from ``frames.csv.gz`` where the bag ran) plus the errors of bags whose task
never returned, so a restarted run that skipped finished bags, a sequential run and a Ray
run all give the same summary.
Totals count the bags that completed; failed (or incomplete) bags are listed with their
errors and their partial figures, never left out. Fleet latency percentiles come from a
merged logarithmic histogram (0.1 % resolution); per-bag ones are exact.
"""
import json
import math
import os
from typing import Dict, List, Optional

from anytime_infer.replay.reports import FRAMES_FILE, read_frames
import numpy as np

SUMMARY_JSON, SUMMARY_MD, PLOT, RUN_JSON = 'summary.json', 'summary.md', 'fleet.png', 'run.json'
LAT_EDGES = np.power(10.0, np.arange(-3.0, 6.0 + 1e-9, math.log10(1.001)))   # ms
PLOT_BAGS = 30   # the worst bags shown in the plots


class Totals:
    """Counts of one policy summed over bags (frame rows read bag by bag)."""

    def __init__(self) -> None:
        self.bags = 0
        self.frames = self.on_time = self.late = 0
        self.dropped: Dict[str, int] = {}
        self.gt_frames = self.correct = 0
        self.depth_hist: List[int] = []
        self.lat_hist = np.zeros(len(LAT_EDGES) - 1, np.int64)

    def add(self, rows: List[Dict], has_gt: bool) -> None:
        """Add one bag's frame rows."""
        self.bags += 1
        self.frames += len(rows)
        for r in rows:
            if r['outcome'] == 'on_time':
                self.on_time += 1
            elif r['outcome'] == 'late':
                self.late += 1
            else:
                self.dropped[r['reason']] = self.dropped.get(r['reason'], 0) + 1
                continue
            d = int(r['depth'])
            if d >= 1:
                self.depth_hist += [0] * (d - len(self.depth_hist))
                self.depth_hist[d - 1] += 1
        if has_gt:
            self.gt_frames += len(rows)
            self.correct += sum(bool(r['correct']) for r in rows)
        lat = np.array([r['latency_ms'] for r in rows if r['latency_ms'] is not None])
        if lat.size:
            idx = np.searchsorted(LAT_EDGES, np.clip(lat, LAT_EDGES[0], LAT_EDGES[-1]),
                                  side='right') - 1
            np.add.at(self.lat_hist, np.clip(idx, 0, len(self.lat_hist) - 1), 1)

    def partial(self) -> Dict:
        """Return the counts as JSON (sparse latency histogram), to merge elsewhere."""
        nz = np.flatnonzero(self.lat_hist)
        return {'bags': self.bags, 'frames': self.frames, 'on_time': self.on_time,
                'late': self.late, 'dropped': dict(sorted(self.dropped.items())),
                'gt_frames': self.gt_frames, 'correct': self.correct,
                'depth_hist': list(self.depth_hist),
                'latency_bins': {str(int(i)): int(self.lat_hist[i]) for i in nz}}

    def merge(self, part: Dict) -> None:
        """Add counts written by ``partial`` (one bag's, computed where it ran)."""
        self.bags += part['bags']
        self.frames += part['frames']
        self.on_time += part['on_time']
        self.late += part['late']
        for k, v in part['dropped'].items():
            self.dropped[k] = self.dropped.get(k, 0) + v
        self.gt_frames += part['gt_frames']
        self.correct += part['correct']
        d = part['depth_hist']
        self.depth_hist += [0] * (len(d) - len(self.depth_hist))
        for k, c in enumerate(d):
            self.depth_hist[k] += c
        for i, c in part['latency_bins'].items():
            self.lat_hist[int(i)] += c

    def percentile(self, q: float) -> Optional[float]:
        """Latency (ms) at percentile q from the histogram (bin's geometric centre)."""
        n = int(self.lat_hist.sum())
        if not n:
            return None
        i = int(np.searchsorted(np.cumsum(self.lat_hist), math.ceil(q / 100.0 * n)))
        return round(float(math.sqrt(LAT_EDGES[i] * LAT_EDGES[i + 1])), 3)

    def result(self) -> Dict:
        """JSON-ready totals."""
        published = sum(self.depth_hist)
        out = {'bags': self.bags, 'frames_in': self.frames, 'on_time': self.on_time,
               'late': self.late, 'dropped': dict(sorted(self.dropped.items())),
               'frames_with_ground_truth': self.gt_frames,
               'accuracy': round(self.correct / self.gt_frames, 6) if self.gt_frames else None,
               'mean_depth': round(sum((k + 1) * c for k, c in enumerate(self.depth_hist)) /
                                   published, 6) if published else 0.0,
               'depth_histogram': list(self.depth_hist)}
        out.update({f'latency_ms_p{q}': self.percentile(q) for q in (50, 95, 99)})
        return out


def _policy_dir(out: str, name: str, policy: str, compare: bool) -> str:
    return os.path.join(out, name, policy) if compare else os.path.join(out, name)


def _read_json(path: str) -> Optional[Dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def build_summary(out: str, jobs, results: Dict[str, Dict], cfg) -> Dict:
    """Per bag and per policy figures, totals over complete bags, the worst bags first."""
    totals = {p: Totals() for p in cfg.policies}
    bags = []
    for job in jobs:
        done = results.get(job.name) or _read_json(os.path.join(out, job.name, 'job.json'))
        entry = {'name': job.name, 'bag': os.path.abspath(job.bag), 'ok': False,
                 'errors': list(done['errors']) if done else ['no result (not evaluated)'],
                 'ground_truth': None, 'policies': {}}
        reps = {p: _read_json(os.path.join(_policy_dir(out, job.name, p, cfg.compare),
                                           'report.json')) for p in cfg.policies}
        for p, rep in reps.items():
            if rep and 'total' in rep:
                entry['policies'][p] = rep['total']
                entry['ground_truth'] = rep['ground_truth']
        entry['ok'] = bool(done and done['status'] == 0 and
                           len(entry['policies']) == len(cfg.policies) and
                           all(r['complete'] for r in reps.values()))
        if entry['ok']:
            for p in cfg.policies:
                totals[p].merge(done['totals'][p])
        elif not entry['errors']:
            entry['errors'] = ['incomplete outputs']
        bags.append(entry)
    failed = [b['name'] for b in bags if not b['ok']]
    return {'model': cfg.model, 'mode': 'deterministic' if cfg.deterministic else 'dds',
            'policies': list(cfg.policies), 'deadline_ms': cfg.deadline_ms, 'seed': cfg.seed,
            'rate': cfg.rate, 'bags_total': len(bags), 'bags_ok': len(bags) - len(failed),
            'bags_failed': len(failed), 'failed': failed,
            'total': {p: t.result() for p, t in totals.items()},
            'worst_first': [b['name'] for b in sorted(bags, key=_badness(cfg.policies[0]))],
            'bags': bags}


def bag_totals(out_dir: str, policies: List[str], compare: bool) -> Dict[str, Dict]:
    """Per policy, one bag's counts for the fleet totals (where the bag ran; read back)."""
    parts = {}
    for p in policies:
        folder = os.path.join(out_dir, p) if compare else out_dir
        rep = _read_json(os.path.join(folder, 'report.json'))
        if not rep or 'total' not in rep:
            continue
        t = Totals()
        t.add(read_frames(os.path.join(folder, FRAMES_FILE)), bool(rep['ground_truth']))
        parts[p] = t.partial()
    return parts


def _badness(policy: str):
    """Sort key: failed bags, then by accuracy (ground truth), then by on-time share."""
    def key(b: Dict):
        s = b['policies'].get(policy)
        if not b['ok'] or s is None:
            return (0, 0, 0.0, b['name'])
        if s['accuracy'] is not None:
            return (1, 0, s['accuracy'], b['name'])
        return (1, 1, s['on_time'] / max(s['frames_in'], 1), b['name'])
    return key


def _dropped(d: Dict[str, int]) -> str:
    n = sum(d.values())
    return f'{n} (' + ', '.join(f'{k} {v}' for k, v in sorted(d.items())) + ')' if n else '0'


def _row(label: str, s: Dict) -> str:
    acc = '-' if s['accuracy'] is None else f'{s["accuracy"]:.3f}'
    lat = ' / '.join('-' if s[f'latency_ms_p{q}'] is None else f'{s[f"latency_ms_p{q}"]:.1f}'
                     for q in (50, 95, 99))
    return (f'| {label} | {s["frames_in"]} | {s["on_time"]} | {s["late"]} | '
            f'{_dropped(s["dropped"])} | {acc} | {s["mean_depth"]:.2f} | {lat} |')


HEAD = ('frames | on_time | late | dropped (by reason) | accuracy | mean_depth | '
        'latency p50 / p95 / p99 ms |')


def summary_markdown(s: Dict) -> str:
    """Write the summary as markdown: totals per policy, failed bags, bags worst first."""
    lines = [f'# fleet evaluation: {s["bags_total"]} bags, model {s["model"]}, {s["mode"]}, '
             f'deadline {s["deadline_ms"]} ms, seed {s["seed"]}, rate {s["rate"]}', '',
             f'{s["bags_ok"]} complete, {s["bags_failed"]} failed. Totals count complete '
             'bags; accuracy counts frames of bags with ground truth (late and dropped '
             'frames wrong).', '', f'![fleet]({PLOT})', '', '## Totals', '',
             '| policy | bags | ' + HEAD, '|---|---|---|---|---|---|---|---|---|']
    for p, t in s['total'].items():
        lines.append(_row(f'{p} | {t["bags"]}', t))
    if s['failed']:
        lines += ['', '## Failed bags', '']
        by = {b['name']: b for b in s['bags']}
        lines += [f'- `{n}` ({by[n]["bag"]}): ' + '; '.join(by[n]['errors'])
                  for n in s['failed']]
    if len(s['policies']) > 1:
        lines += ['', '## Policies per bag (accuracy, or on-time share without ground '
                  'truth), worst first', '', '| bag | ' + ' | '.join(s['policies']) + ' |',
                  '|---|' + '---|' * len(s['policies'])]
        by = {b['name']: b for b in s['bags']}
        for n in s['worst_first']:
            cells = []
            for p in s['policies']:
                x = by[n]['policies'].get(p)
                cells.append('failed' if x is None else
                             f'{x["accuracy"]:.3f}' if x['accuracy'] is not None else
                             f'{x["on_time"] / max(x["frames_in"], 1):.3f} on time')
            lines.append(f'| {n} | ' + ' | '.join(cells) + ' |')
    lines += ['', '## Bags, worst first', '', '| bag | policy | ' + HEAD,
              '|---|---|---|---|---|---|---|---|---|']
    by = {b['name']: b for b in s['bags']}
    for n in s['worst_first']:
        b = by[n]
        if not b['policies']:
            lines.append(f'| {n} | - | FAILED: ' + '; '.join(b['errors']).replace('|', '/') +
                         ' |||||||')
        for p, x in b['policies'].items():
            lines.append(_row(f'{n}{"" if b["ok"] else " (incomplete)"} | {p}', x))
    return '\n'.join(lines) + '\n'


def plot_fleet(path: str, s: Dict) -> str:
    """Accuracy and mean depth per bag and policy, outcome shares; the worst bags on top."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    by = {b['name']: b for b in s['bags']}
    names = s['worst_first'][:PLOT_BAGS]
    pols = s['policies']
    fig, axes = plt.subplots(1, 3, figsize=(15, 1.2 + 0.32 * max(len(names), 3) *
                                            max(1, len(pols) / 2)), sharey=True)
    y = np.arange(len(names))[::-1]     # worst at the top
    h = 0.8 / len(pols)
    for j, p in enumerate(pols):
        off = y + 0.4 - h * (j + 0.5)
        acc = [np.nan if by[n]['policies'].get(p, {}).get('accuracy') is None
               else by[n]['policies'][p]['accuracy'] for n in names]
        dep = [by[n]['policies'].get(p, {}).get('mean_depth', np.nan) for n in names]
        axes[0].barh(off, acc, h, label=p)
        axes[1].barh(off, dep, h, label=p)
    colors = {'on_time': 'tab:green', 'late': 'tab:orange', 'dropped': 'tab:red'}
    for j, p in enumerate(pols):   # one stacked bar per bag and policy, in policy order
        off = y + 0.4 - h * (j + 0.5)
        left = np.zeros(len(names))
        for kind, color in colors.items():
            vals = []
            for n in names:
                x = by[n]['policies'].get(p)
                c = 0.0 if x is None else (sum(x['dropped'].values()) if kind == 'dropped'
                                           else x[kind])
                vals.append(c / max(x['frames_in'], 1) if x else 0.0)
            axes[2].barh(off, vals, h * 0.9, left=left, color=color,
                         label=kind if j == 0 else None)
            left += np.array(vals)
    labels = [n if by[n]['ok'] else f'{n} (failed)' for n in names]
    axes[0].set_yticks(y, labels, fontsize=7)
    axes[0].set_xlabel('accuracy (bags with ground truth)')
    axes[0].set_xlim(0, 1)
    axes[1].set_xlabel('mean depth (stages)')
    axes[2].set_xlabel('share of frames (bars in the policy order of the other plots)')
    axes[2].set_xlim(0, 1)
    for ax, title in zip(axes, ('accuracy per bag', 'depth per bag', 'outcome shares')):
        ax.set_title(title + (f', worst {len(names)} of {len(by)}' if len(by) > len(names)
                              else ''))
        ax.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.14),
                  ncol=max(len(pols), 3))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _atomic_write(path: str, text: str) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def write_summary(out: str, summary: Dict, run_info: Dict) -> List[str]:
    """Write summary.json, summary.md, fleet.png and run.json (each complete or absent)."""
    files = [os.path.join(out, n) for n in (SUMMARY_JSON, SUMMARY_MD, PLOT, RUN_JSON)]
    _atomic_write(files[0], json.dumps(summary, indent=1, sort_keys=True) + '\n')
    _atomic_write(files[1], summary_markdown(summary))
    tmp = plot_fleet(files[2] + '.tmp.png', summary)
    os.replace(tmp, files[2])
    _atomic_write(files[3], json.dumps(run_info, indent=1, sort_keys=True) + '\n')
    return files
