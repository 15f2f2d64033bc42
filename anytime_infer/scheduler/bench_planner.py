"""
How the off-path planner scales with the number of pending tasks (``anytime-infer bench``).

For 8, 32, 128 and 256 pending tasks (frames of several cameras, several regions per
frame: regions of one frame share its deadline), in a loaded state (deadlines a few stages
apart, some tasks with results, some without): the time of

* the worker's boundary (``OffPathPlanner.decide`` after a stage of the front task, its
  exit's outcome posted: the plan lookup, guards, drops), which is on the critical path;
* the planner's ``prepare`` for that stage (off the critical path, while it runs);
* for comparison, today's inline decision (``ImpreciseDP.decide``) on the same state.

The boundary timed is the second one of a run (a stage of the front task, then of the
task the first boundary chose; each planned before it ends): the first one after
admitting n frames also folds n arrivals into the worker's reserve once (amortised O(1)
per frame). Every run uses new task ids (no cached table helps); p50 and p99 over the
runs. Times are the thread's CPU time (``time.thread_time``, less the cost of reading
it), so that other processes on a shared machine do not inflate them; on a core of its
own a thread's wall time is the same.
"""
import time
from typing import Dict, List, Sequence

from anytime_infer.scheduler.planner import OffPathPlanner
from anytime_infer.scheduler.policies import ImpreciseDP
from anytime_infer.scheduler.profiles import ModelProfile
from anytime_infer.scheduler.simulator import clock_tare
from anytime_infer.scheduler.task import Task
from anytime_infer.scheduler.timing import StageTimes
import numpy as np

SIZES = (8, 32, 128, 256)


def _state(profile: ModelProfile, n: int, first_id: int, rng: np.random.Generator,
           regions: int = 4, cameras: int = 8) -> List[Task]:
    """Make n pending tasks: frames of ``regions`` regions, deadlines stages apart."""
    stage = profile.full_depth_mean() / profile.num_stages
    tasks = []
    for i in range(n):
        frame = i // regions
        deadline = 0.002 + stage * (1.5 * frame + 2.0)
        t = Task(first_id + i, frame % cameras, 0.0, deadline, profile.num_stages)
        t.stages_done = int(rng.integers(0, 3)) if i else 1
        t.confidences = [float(rng.random()) for _ in range(t.stages_done)]
        tasks.append(t)
    return tasks


def scale_benchmark(profile: ModelProfile, sizes: Sequence[int] = SIZES, runs: int = 200,
                    seed: int = 0) -> List[Dict]:
    """Boundary, planning and inline decision times (ms, p50/p99) per number of tasks."""
    clock = time.thread_time
    tare = clock_tare(clock)
    rng = np.random.default_rng(seed)
    out = []
    next_id = 0
    for n in sizes:
        boundary, planning, inline = [], [], []
        for _ in range(runs):
            tasks = _state(profile, n, next_id, rng)
            next_id += n
            by_id = {t.task_id: t for t in tasks}
            inline_pol = ImpreciseDP(profile, StageTimes(profile), batching=True)
            t0 = clock()
            inline_pol.decide(0.0, tasks)
            inline.append(clock() - t0 - tare)
            pol = ImpreciseDP(profile, StageTimes(profile), batching=True)
            link = OffPathPlanner(pol, clock)
            for t in tasks:
                link.arrived(t)
            run, now = [tasks[0].task_id], 0.0
            for step in range(2):
                stage = by_id[run[0]].stages_done + 1
                seq = link.stage_start(now, run, stage)
                t0 = clock()
                link.plan(seq)                              # the planner, while it runs
                planning.append(clock() - t0 - tare)
                now += pol.times.plan(stage, len(run))      # the stage ends
                for tid in run:
                    t = by_id[tid]
                    t.stages_done = stage
                    t.confidences.append(float(rng.random()))
                t0 = clock()
                for tid in run:
                    link.stage_done(tid, stage, by_id[tid].confidences[-1])
                dec = link.decide(now, by_id, run)
                for tid, _ in dec.drop:
                    link.removed(tid)
                for tid in dec.finish:
                    link.removed(tid)
                spent = clock() - t0 - tare
                for tid, _ in dec.drop:
                    by_id.pop(tid, None)
                for tid in dec.finish:
                    by_id.pop(tid, None)
                if step == 1:
                    boundary.append(spent)
                run = [t for t in dec.run if t in by_id]
                if not run:
                    if not by_id:
                        break
                    run = [min(by_id.values(), key=lambda t: t.deadline).task_id]
        row = {'tasks': n, 'runs': runs}
        for key, xs in (('boundary', boundary), ('planning', planning), ('inline', inline)):
            ms = np.maximum(np.array(xs), 0.0) * 1000.0
            row[f'{key}_ms_p50'] = float(np.percentile(ms, 50))
            row[f'{key}_ms_p99'] = float(np.percentile(ms, 99))
        out.append(row)
    return out


def scale_table(rows: List[Dict]) -> str:
    """Format the benchmark as a markdown table."""
    lines = ['| pending tasks | boundary p50 / p99 ms | planning p50 / p99 ms '
             '(off the critical path) | inline DP decision p50 / p99 ms |',
             '|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r["tasks"]} | {r["boundary_ms_p50"]:.4f} / '
                     f'{r["boundary_ms_p99"]:.4f} | {r["planning_ms_p50"]:.3f} / '
                     f'{r["planning_ms_p99"]:.3f} | {r["inline_ms_p50"]:.3f} / '
                     f'{r["inline_ms_p99"]:.3f} |')
    return '\n'.join(lines)
