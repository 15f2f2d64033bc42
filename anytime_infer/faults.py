"""
Fault injection around a real model, an in-process frame driver, and the fault benchmark.

``FaultyStages`` wraps a network's ``run_stage`` (the real stage still runs): it can add a
delay, stretch a stage by a factor (thermal throttling), raise, return NaN, or raise
CUDA's out-of-memory error, on chosen stages, switched at run time. ``drive`` submits
frames to an ``Executor`` at a fixed rate through phases (each with its fault) and
returns every outcome; ``window`` summarises the outcomes of frames that arrived in a
time window. ``python -m anytime_infer.faults`` prints the figures of README's "Faults
and stalls": depth and on-time share before, during and after a stall, at several loads,
how fast the plans adapt to a 10x slowdown, and the worker's overhead at 1x and 2x.
"""
import argparse
from dataclasses import dataclass
import os
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch


@dataclass
class Fault:
    """What the wrapper does to a stage run (all off by default)."""

    delay_s: float = 0.0              # added to every run (a stall)
    factor: float = 1.0               # its computation takes this many times as long
    raise_error: bool = False         # RuntimeError
    oom: bool = False                 # torch.cuda.OutOfMemoryError
    nan: bool = False                 # logits (and state) become NaN
    stages: Optional[Sequence[int]] = None   # 1-based; None: every stage


class FaultyStages:
    """Wrap ``net.run_stage`` with a switchable ``Fault`` (the real stage still runs)."""

    def __init__(self, net) -> None:
        self.net = net
        self.real = net.run_stage
        self.fault = Fault()
        self.runs: Dict[int, int] = {}
        # (end, stage, batch size, seconds), wall clock
        self.durations: List[Tuple[float, int, int, float]] = []
        net.run_stage = self.run_stage

    def set_fault(self, fault: Optional[Fault]) -> None:
        """Switch to another fault (None: none)."""
        self.fault = fault or Fault()

    def remove(self) -> None:
        """Restore the network's own ``run_stage``."""
        self.net.run_stage = self.real

    def run_stage(self, k: int, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run the real stage, then apply the fault (if it concerns stage ``k``)."""
        f = self.fault
        self.runs[k] = self.runs.get(k, 0) + 1
        hit = f.stages is None or k in f.stages
        if hit and f.oom:
            raise torch.cuda.OutOfMemoryError('injected: CUDA out of memory')
        if hit and f.raise_error:
            raise RuntimeError(f'injected failure of stage {k}')
        w0 = time.monotonic()
        t0 = time.thread_time()
        state, logits = self.real(k, state)
        if hit:
            # Throttling stretches the stage's computation (its CPU time; torch runs a
            # CPU stage in the calling thread with torch_threads 1), not the time this
            # thread was preempted on a busy machine.
            spent = time.thread_time() - t0
            extra = f.delay_s + spent * (f.factor - 1.0)
            if extra > 0:
                time.sleep(extra)
            if f.nan:
                state = state * float('nan')
                logits = logits * float('nan')
        end = time.monotonic()
        self.durations.append((end, k, len(state), end - w0))
        return state, logits


def make_executor(model: str = 'fashion_mnist', on_outcome: Optional[Callable] = None,
                  folder: Optional[str] = None, **kw):
    """
    Build the executor as the node configures it (imprecise_dp, percentile 99, CPU).

    Returns (executor, outcomes list filled by its callback).
    """
    from anytime_infer.executor import Executor
    from anytime_infer.model.store import load_model, PROFILE, read_json, resolve_model_dir
    from anytime_infer.scheduler.profiles import profile_from_dict
    folder = folder or resolve_model_dir(model)
    net, card = load_model(folder)
    raw = read_json(os.path.join(folder, PROFILE), 'the profile')
    outcomes: List = []
    lock = threading.Lock()

    def collect(o) -> None:
        with lock:
            outcomes.append(o)
        if on_outcome is not None:
            on_outcome(o)
    args = {'policy': 'imprecise_dp', 'device': 'cpu', 'max_pending': 64, 'percentile': 99}
    args.update(kw)
    ex = Executor(net, card, profile_from_dict(raw, name=folder), raw['temperature'],
                  collect, **args)
    ex.warm_up()
    return ex, outcomes


def drive(ex, images: np.ndarray, rate_hz: float, deadline_s: float,
          phases: Sequence[Tuple[float, Optional[Fault]]], faults: FaultyStages,
          cameras: int = 1, probe: Optional[Callable[[float], None]] = None) -> float:
    """
    Submit frames at ``rate_hz`` (over ``cameras`` streams) through ``phases``.

    Each phase is (seconds, fault); frames carry their arrival time since the start in
    ``meta``. ``probe(t)`` is called about every 10 ms (for time series). Returns the
    start time (executor clock).
    """
    from anytime_infer.executor import FrameJob
    t0 = ex.clock()
    t, i, nxt_probe = t0, 0, t0
    for seconds, fault in phases:
        faults.set_fault(fault)
        end = t + seconds
        while t < end:
            now = ex.clock()
            if probe is not None and now >= nxt_probe:
                probe(now - t0)
                nxt_probe = now + 0.01
            if now < t:
                time.sleep(min(t - now, 0.01))
                continue
            img = images[i % len(images)][None]
            ex.submit(FrameJob(i % cameras, now, now + deadline_s, img, meta=now - t0))
            i += 1
            t += 1.0 / rate_hz
    faults.set_fault(None)
    # Let the last frames end on their own (at their deadlines), not at stop().
    end = ex.clock() + deadline_s + 0.05
    while ex.pending() and ex.clock() < end:
        time.sleep(0.005)
    return t0


def window(outcomes: Sequence, start: float, end: float) -> Dict:
    """Summarise the frames that arrived in [start, end): on time, late, depth, drops."""
    frames = [o for o in list(outcomes) if start <= o.job.meta < end]
    n = len(frames)
    on_time = [o for o in frames if o.outcome == 'on_time']
    late = [o for o in frames if o.outcome == 'late']
    reasons: Dict[str, int] = {}
    for o in frames:
        if o.outcome == 'dropped':
            reasons[o.reason] = reasons.get(o.reason, 0) + 1
    depths = [r.depth for o in on_time + late for r in o.results]
    return {'frames': n, 'on_time': len(on_time) / n if n else 0.0,
            'late': len(late) / n if n else 0.0,
            'depth': float(np.mean(depths)) if depths else 0.0, 'dropped': reasons}


def recovery_time(outcomes: Sequence, after: float, target: Dict, span: float = 0.5,
                  horizon: float = 6.0, depth_tol: float = 0.5, share: float = 0.9) -> float:
    """
    Seconds after ``after`` until a window of ``span`` s is back at the ``target`` level.

    Back: on-time share at least ``share`` of the target's, mean depth at most ``depth_tol``
    below it (the machine running this is shared: the level itself varies that much).
    Windows start every ``span`` / 5; inf when none is back within ``horizon``.
    """
    for s in np.arange(after, after + horizon - span + 1e-9, span / 5):
        w = window(outcomes, s, s + span)
        if w['frames'] and w['on_time'] >= share * target['on_time'] \
                and w['depth'] >= target['depth'] - depth_tol:
            return float(s - after)
    return float('inf')


def _stall_run(images, rate: float, stall_s: float, deadline_s: float, log) -> Dict:
    ex, outcomes = make_executor()
    faults = FaultyStages(ex.net)
    plans: List[Tuple[float, float]] = []
    ex.start()
    pre, post = 2.0, 4.0
    try:
        drive(ex, images, rate, deadline_s,
              [(pre, None), (stall_s, Fault(delay_s=0.060)), (post, None)], faults,
              probe=lambda t: plans.append((t, ex.times.plan(1))))
    finally:
        ex.stop()
    base = float(np.median([p for t, p in plans if 0.5 <= t < pre]))
    forgot = next((t - pre - stall_s for t, p in plans
                   if t >= pre + stall_s and p <= 2 * base), np.inf)
    before = window(outcomes, 0.5, pre)
    during = window(outcomes, pre, pre + stall_s)
    after = window(outcomes, pre + stall_s + 2.0, pre + stall_s + post)
    rec = recovery_time(outcomes, pre + stall_s, before, horizon=post)
    log(f'{rate:6.0f} Hz  stall {stall_s:4.1f} s | before: on time {before["on_time"]:.3f} '
        f'depth {before["depth"]:.2f} | during: on time {during["on_time"]:.3f} late '
        f'{during["late"]:.3f} | stage-1 plan back after {forgot:.2f} s, answers back after '
        f'{rec:.2f} s | 2-4 s after: on time {after["on_time"]:.3f} depth '
        f'{after["depth"]:.2f}')
    return {'rate_hz': rate, 'stall_s': stall_s, 'before': before, 'during': during,
            'after': after, 'recovery_s': rec, 'plan_back_s': forgot}


def _throttle_run(images, rate: float, deadline_s: float, log) -> Dict:
    ex, outcomes = make_executor()
    faults = FaultyStages(ex.net)
    series: List[Tuple[float, float, float, bool]] = []
    p50_1 = ex.times.calibrated(1)[0]

    def probe(t: float) -> None:
        h = ex.health()
        series.append((t, ex.times.plan(1), h.stage_slowdown.get(1, 1.0) * p50_1, h.stalled))
    ex.start()
    pre, hot, post = 2.0, 4.0, 3.0
    try:
        t0 = drive(ex, images, rate, deadline_s,
                   [(pre, None), (hot, Fault(factor=10.0)), (post, None)], faults,
                   probe=probe)    # the executor's clock is time.monotonic, as faults'
    finally:
        ex.stop()
    # Adapted: the stage-1 plan covers 90 % of the stage-1 runs (batch 1) under throttling.
    hot_runs = [d for end, k, b, d in faults.durations
                if k == 1 and b == 1 and pre + 0.5 <= end - t0 < pre + hot]
    hot_p90 = float(np.percentile(hot_runs, 90)) if hot_runs else np.inf
    adapted = next((t - pre for t, p, _, _ in series if t >= pre and p >= hot_p90), np.inf)
    detected = next((t - pre for t, _, _, s in series if t >= pre and s), np.inf)
    cleared = next((t - pre - hot for t, _, _, s in series if t >= pre + hot and not s),
                   np.inf)
    before = window(outcomes, 0.5, pre)
    first = window(outcomes, pre, pre + 1.0)
    settled = window(outcomes, pre + 1.0, pre + hot)
    after = window(outcomes, pre + hot + 2.0, pre + hot + post)
    log(f'{rate:6.0f} Hz  10x slower for {hot:.0f} s | stage-1 plan covers it after '
        f'{adapted:.2f} s, stall reported after {detected:.2f} s, cleared {cleared:.2f} s '
        f'after | late: first 1 s {first["late"]:.3f}, then {settled["late"]:.3f} | depth '
        f'before {before["depth"]:.2f}, throttled {settled["depth"]:.2f}, 2-3 s after '
        f'{after["depth"]:.2f}')
    return {'rate_hz': rate, 'adapt_s': adapted, 'detect_s': detected, 'cleared_s': cleared,
            'before': before, 'first_s': first, 'settled': settled, 'after': after}


def _overhead_run(images, load: float, deadline_s: float, log) -> Dict:
    """Two cameras at ``load`` times the calibrated full-depth capacity, no fault."""
    ex, outcomes = make_executor()
    rate = load / ex.profile.full_depth_mean()
    faults = FaultyStages(ex.net)
    ex.start()
    try:
        drive(ex, images, rate, deadline_s, [(6.0, None)], faults, cameras=2)
    finally:
        ex.stop()
    st = ex.stats()
    w = window(outcomes, 1.0, 6.0)
    log(f'{load:.1f}x ({rate:.0f} Hz, 2 cameras) | on time {w["on_time"]:.3f} depth '
        f'{w["depth"]:.2f} | overhead per stage p50 {st["overhead_ms_p50"]:.3f} ms, share '
        f'of busy time {st["overhead_share"]:.3f} (CPU time {st["overhead_cpu_share"]:.3f}):'
        f' admit {st["admit_share"]:.3f}, decide {st["decide_share"]:.3f}, exit '
        f'{st["exit_share"]:.3f}, publish {st["publish_share"]:.3f}, dispatch '
        f'{st["dispatch_share"]:.3f} (planner {st["planner"]})')
    return {'load': load, 'rate_hz': rate, 'window': w, 'stats': st}


def bench_executor(loads: Sequence[float] = (1.0, 2.0),
                   planners: Sequence[str] = ('inline', 'thread'), seconds: float = 5.0,
                   rounds: int = 1, deadline_s: float = 0.05, cameras: int = 2,
                   log: Callable[[str], None] = print) -> List[Dict]:
    """
    Drive the executor (bundled fashion_mnist, CPU) at each load, once per planner mode.

    Load: frames per second times the calibrated full-depth time (1x: the model at full
    depth would keep the worker just busy). The runs are interleaved (round by round, load
    by load, mode by mode) so that modes are compared under the same machine load. Prints
    one line per run (overhead per stage run, its share of busy time and its parts,
    on-time share, depth, plan lookups) and returns the figures.
    """
    from anytime_infer.camera_player import load_samples
    torch.set_num_threads(1)          # as the node (torch_threads 1)
    images = load_samples('fashion_mnist')['images']
    log(f'executor, fashion_mnist on the CPU, {cameras} cameras, deadline '
        f'{1000 * deadline_s:g} ms, {seconds:g} s per run; load average '
        f'{" ".join(f"{x:.2f}" for x in os.getloadavg())}')
    log('| load | planner | overhead per stage p50 / p99 (ms) | share of busy time | admit | '
        'decide | exit | publish | dispatch | on time | depth | lookups / fallbacks |')
    log('|---|---|---|---|---|---|---|---|---|---|---|---|')
    rows = []
    for _ in range(rounds):
        for load in loads:
            for mode in planners:
                ex, outcomes = make_executor(planner=mode)
                rate = load / ex.profile.full_depth_mean()
                faults = FaultyStages(ex.net)
                ex.start()
                try:
                    drive(ex, images, rate, deadline_s, [(seconds, None)], faults,
                          cameras=cameras)
                finally:
                    ex.stop()
                st = ex.stats()
                w = window(outcomes, min(1.0, seconds / 4), seconds)
                log(f'| {load:g}x ({rate:.0f} Hz) | {st["planner"]} | '
                    f'{st["overhead_ms_p50"]:.3f} / {st["overhead_ms_p99"]:.3f} | '
                    f'{st["overhead_share"]:.3f} | {st["admit_share"]:.3f} | '
                    f'{st["decide_share"]:.3f} | {st["exit_share"]:.3f} | '
                    f'{st["publish_share"]:.3f} | {st["dispatch_share"]:.3f} | '
                    f'{w["on_time"]:.3f} | {w["depth"]:.2f} | '
                    f'{st["plan_lookups"]} / {st["plan_fallbacks"]} |')
                rows.append({'load': load, 'planner': mode, 'rate_hz': rate,
                             'window': w, 'stats': st})
    log(f'load average after: {" ".join(f"{x:.2f}" for x in os.getloadavg())}')
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    """Print the stall-recovery and throttling figures."""
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--rates', default='20,100,400', help='frame rates (Hz), comma-separated')
    ap.add_argument('--stalls', default='0.5,2,6', help='stall lengths (s), comma-separated')
    ap.add_argument('--overhead-loads', default='1,2',
                    help='loads (x full-depth capacity) for the overhead figures')
    ap.add_argument('--deadline-ms', type=float, default=50.0)
    args = ap.parse_args(argv)
    from anytime_infer.camera_player import load_samples
    torch.set_num_threads(1)          # as the node (torch_threads 1)
    images = load_samples('fashion_mnist')['images']
    rates = [float(r) for r in args.rates.split(',')]
    for rate in rates:
        for stall in (float(s) for s in args.stalls.split(',') if s):
            _stall_run(images, rate, stall, args.deadline_ms / 1000, print)
    for rate in rates:
        _throttle_run(images, rate, args.deadline_ms / 1000, print)
    for load in (float(x) for x in args.overhead_loads.split(',') if x):
        _overhead_run(images, load, args.deadline_ms / 1000, print)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
