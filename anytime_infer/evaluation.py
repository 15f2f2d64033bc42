"""Simulation runs and the policy benchmark behind ``anytime-infer simulate`` and ``bench``."""
from dataclasses import dataclass
import json
import os
from typing import Dict, List, Optional, Sequence

from anytime_infer.scheduler.policies import make_policy, POLICY_NAMES
from anytime_infer.scheduler.profiles import load_profile, ModelProfile, \
    profile_from_dict, synthetic_latency
from anytime_infer.scheduler.simulator import make_streams, simulate
from anytime_infer.scheduler.timing import StageTimes
from anytime_infer.scheduler.traces import read_trace, tables_from_trace, Trace
import numpy as np

TRACE_FILE = 'trace_test.csv.gz'


@dataclass
class Source:
    """A profile (latency + utility tables) and the trace that frames are drawn from."""

    name: str
    profile: ModelProfile
    trace: Trace


def bundled_source(model: str) -> Source:
    """Load a bundled model (or model folder): its profile and its test-split trace."""
    from anytime_infer.model.store import resolve_model_dir
    folder = resolve_model_dir(model)
    trace_path = os.path.join(folder, TRACE_FILE)
    if not os.path.exists(trace_path):
        raise FileNotFoundError(f'{trace_path} missing: run anytime-infer trace --model '
                                f'{model} --out {trace_path}')
    return Source(model, load_profile(os.path.join(folder, 'profile.json')),
                  read_trace(trace_path))


def trace_source(path: str, stage_ms: Sequence[float], seed: int = 0) -> Source:
    """
    Load a trace from elsewhere, with mean stage latencies.

    Its samples are split in half (seeded): one half builds the utility tables, frames are
    drawn from the other, so the tables are never fitted on the frames they are judged on.
    """
    trace = read_trace(path)
    if len(stage_ms) != trace.num_exits:
        raise ValueError(f'--stage-ms has {len(stage_ms)} values, the trace {trace.num_exits} '
                         'exits')
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(trace.samples))
    half = len(order) // 2
    if half < 1:
        raise ValueError(f'{path}: too few samples to split')
    fit, held = trace.subset(order[:half]), trace.subset(order[half:])
    acc, edges, cond = tables_from_trace(fit)
    profile = profile_from_dict({'num_stages': trace.num_exits,
                                 'latency': synthetic_latency(stage_ms),
                                 'exit_accuracy': acc, 'conf_edges': edges,
                                 'cond_accuracy': cond}, name=os.path.basename(path))
    return Source(os.path.basename(path), profile, held)


def run_policy(src: Source, policy: str, load: float, depth: Optional[int] = None,
               cameras: int = 4, deadline_periods: float = 2.0, frames: int = 3000,
               seed: int = 0, arrival: str = 'periodic', percentile: int = 95,
               adapt: bool = True, batching: bool = True, charge_decisions: bool = True,
               weights: Optional[List[float]] = None,
               rate_ratios: Optional[List[float]] = None, planner: str = 'auto',
               decision_clock: str = 'cpu') -> Dict:
    """Simulate one policy at one load; return the summary dict (JSON-ready)."""
    times = StageTimes(src.profile, percentile=percentile, adapt=adapt)
    pol = make_policy(policy, src.profile, depth=depth, times=times, batching=batching)
    streams = make_streams(src.profile, load, cameras, deadline_periods, weights, rate_ratios)
    res = simulate(src.profile, src.trace, pol, streams, frames, seed, arrival,
                   charge_decisions, planner=planner, decision_clock=decision_clock)
    out = res.summary()
    out.update(policy=pol.name, load=load, model=src.name, cameras=cameras,
               deadline_periods=deadline_periods, seed=seed, arrival=arrival,
               full_depth_ms=src.profile.full_depth_mean() * 1000.0,
               mean_stage_ms=src.profile.full_depth_mean() * 1000.0 / src.profile.num_stages)
    if weights:
        out['accuracy_by_stream'] = [
            float(np.mean([f.correct and f.outcome == 'on_time'
                           for f in res.frames if f.stream == s]))
            for s in range(cameras)]
    return out


LOADS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


def bench_policies(num_stages: int) -> List[tuple]:
    """(label, policy name, depth) of every policy in the sweep."""
    out = []
    for name in POLICY_NAMES:
        if name == 'fixed_depth':
            out += [(f'fixed_depth_{k}', name, k) for k in range(2, num_stages)]
        else:
            out.append((name, name, None))
    return out


def sweep(src: Source, loads: Sequence[float] = LOADS, frames: int = 2000, seed: int = 11,
          progress=None) -> List[Dict]:
    """Every policy at every load on one source."""
    rows = []
    for load in loads:
        for label, name, depth in bench_policies(src.profile.num_stages):
            r = run_policy(src, name, load, depth=depth, frames=frames, seed=seed)
            r['label'] = label
            rows.append(r)
            if progress:
                progress(r)
    return rows


def ablations(src: Source, load: float = 3.0, frames: int = 2000, seed: int = 11) -> List[Dict]:
    """Measure what each addition beyond the paper is worth, at one load."""
    base = {'frames': frames, 'seed': seed}
    cases = [
        ('imprecise_dp (all on)', 'imprecise_dp', {}),
        ('no stage-time percentile (plan on p50)', 'imprecise_dp', {'percentile': 50}),
        ('no measured-time updates', 'imprecise_dp', {'adapt': False}),
        ('no batching', 'imprecise_dp', {'batching': False}),
        ('decision time not charged', 'imprecise_dp', {'charge_decisions': False}),
        ('flat utility (no input dependence)', 'imprecise_dp_flat', {}),
        ('poisson arrivals', 'imprecise_dp', {'arrival': 'poisson'}),
        ('burst arrivals', 'imprecise_dp', {'arrival': 'burst'}),
        ('burst arrivals, fixed_depth_2', 'fixed_depth', {'arrival': 'burst', 'depth': 2}),
        ('stream weights 4,1,1,1 (acc. per stream)', 'imprecise_dp',
         {'weights': [4.0, 1.0, 1.0, 1.0]}),
    ]
    rows = []
    for label, policy, kw in cases:
        r = run_policy(src, policy, load, **{**base, **kw})
        r['label'] = label
        rows.append(r)
    return rows


def markdown_table(rows: List[Dict], loads: Sequence[float]) -> str:
    """Accuracy (miss rate) per policy and load as a markdown table."""
    labels = list(dict.fromkeys(r['label'] for r in rows))
    by = {(r['label'], r['load']): r for r in rows}
    head = '| policy | ' + ' | '.join(f'{x}x' for x in loads) + ' |'
    lines = [head, '|' + '---|' * (len(loads) + 1)]
    for lab in labels:
        cells = []
        for x in loads:
            r = by.get((lab, x))
            cells.append('' if r is None else
                         f'{r["accuracy"]:.3f} ({100 * r["miss_rate"]:.1f}% miss)')
        lines.append(f'| {lab} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_bench(rows: List[Dict], out: str, name: str, loads: Sequence[float]) -> List[str]:
    """CSV, JSON, markdown and PNG plots of a sweep; return the files written."""
    import csv
    os.makedirs(out, exist_ok=True)
    files = []
    keys = ['label', 'load', 'accuracy', 'miss_rate', 'drop_rate', 'mean_depth',
            'decision_ms_p50', 'decision_ms_p99', 'decision_share', 'latency_ms_p50',
            'latency_ms_p99']
    path = os.path.join(out, f'{name}.csv')
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(keys)
        for r in rows:
            w.writerow([r.get(k) for k in keys])
    files.append(path)
    path = os.path.join(out, f'{name}.json')
    with open(path, 'w') as f:
        json.dump(rows, f, indent=1)
    files.append(path)
    path = os.path.join(out, f'{name}.md')
    with open(path, 'w') as f:
        f.write(markdown_table(rows, loads) + '\n')
    files.append(path)
    files += plot_bench(rows, out, name, loads)
    return files


def plot_bench(rows: List[Dict], out: str, name: str, loads: Sequence[float]) -> List[str]:
    """Accuracy vs load, miss rate vs load, depth distribution at the highest load."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    labels = list(dict.fromkeys(r['label'] for r in rows))
    files = []
    for key, ylabel, fname in (('accuracy', 'accuracy (all frames)', 'accuracy_vs_load'),
                               ('miss_rate', 'deadline-miss rate', 'miss_vs_load')):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for lab in labels:
            ys = [next((r[key] for r in rows if r['label'] == lab and r['load'] == x), None)
                  for x in loads]
            ax.plot(loads, ys, marker='o', label=lab,
                    linewidth=2.5 if lab == 'imprecise_dp' else 1.2)
        ax.set_xlabel('load (x full-depth capacity)')
        ax.set_ylabel(ylabel)
        ax.set_title(f'{name}: {ylabel} vs load')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        path = os.path.join(out, f'{name}_{fname}.png')
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        files.append(path)
    top = max(loads)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    chosen = [r for r in rows if r['load'] == top and r['label'] in
              ('imprecise_dp', 'imprecise_dp_flat', 'greedy', 'oracle')]
    width = 0.8 / max(len(chosen), 1)
    for i, r in enumerate(chosen):
        hist = np.array(r['depth_histogram'], dtype=float)
        if hist.sum():
            hist = hist / hist.sum()
        ax.bar(np.arange(1, len(hist) + 1) + i * width - 0.4 + width / 2, hist, width,
               label=r['label'])
    ax.set_xlabel('depth reached (stages)')
    ax.set_ylabel('share of published frames')
    ax.set_title(f'{name}: depth distribution at {top}x load')
    ax.legend(fontsize=8)
    path = os.path.join(out, f'{name}_depth_{top}x.png')
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    files.append(path)
    return files


def decision_benchmark(src: Source, n_tasks: int = 32, runs: int = 300,
                       seed: int = 0) -> Dict:
    """
    Time one planning decision of imprecise_dp for ``n_tasks`` pending 4-stage tasks.

    Every run uses fresh tasks (new ids: no cached table helps) whose front task has run
    its mandatory stage, so the DP must be evaluated; both the default receding horizon
    and a horizon covering all tasks are timed.
    """
    import time as _time
    from anytime_infer.scheduler.policies import ImpreciseDP
    from anytime_infer.scheduler.task import Task
    rng = np.random.default_rng(seed)
    mean_stage = src.profile.full_depth_mean() / src.profile.num_stages
    out = {'tasks': n_tasks, 'mean_stage_ms': mean_stage * 1000.0}
    for label, horizon in (('default_horizon', None), ('full_horizon', n_tasks)):
        kw = {} if horizon is None else {'horizon': horizon}
        pol = ImpreciseDP(src.profile, StageTimes(src.profile), batching=True, **kw)
        times = []
        for r in range(runs):
            tasks = []
            for i in range(n_tasks):
                t = Task(r * n_tasks + i, i % 4, 0.0, 0.004 + 0.0008 * i,
                         src.profile.num_stages)
                t.stages_done = 1 if i == 0 else int(rng.integers(0, 3))
                t.confidences = [float(rng.random()) for _ in range(t.stages_done)]
                tasks.append(t)
            t0 = _time.perf_counter()
            pol.decide(0.0, tasks)
            times.append(_time.perf_counter() - t0)
        p50 = float(np.median(times)) * 1000.0
        out[label] = {'horizon': pol.horizon, 'decision_ms_p50': p50,
                      'ratio_to_mean_stage': p50 / (mean_stage * 1000.0)}
    return out
