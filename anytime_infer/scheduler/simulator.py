"""
A discrete-event simulator: camera arrivals, one worker, a policy, a trace.

Frames arrive from streams (periodic with jitter, Poisson, or bursts); each frame is a
task whose exit outcomes are those of a random trace sample. The worker runs the stage the
policy chooses, for a time drawn from the calibrated latency distribution; the policy's own
decision time (measured) is charged to the worker. Anytime policies have a task published
at its deadline from its deepest completed exit. Every frame ends in exactly one outcome.
"""
from dataclasses import dataclass, field
import gc
import heapq
import math
import time
from typing import Dict, List, Optional

from anytime_infer.scheduler.planner import choose_planner, decides_on_slots, InlineLink, \
    OffPathPlanner
from anytime_infer.scheduler.policies import Policy
from anytime_infer.scheduler.profiles import ModelProfile
from anytime_infer.scheduler.task import DROP_REASONS, SHUTDOWN, Task
from anytime_infer.scheduler.traces import Trace
import numpy as np

ON_TIME, LATE, DROPPED = 'on_time', 'late', 'dropped'
ARRIVALS = ('periodic', 'poisson', 'burst')


@dataclass
class Stream:
    """One camera: frame rate (Hz), relative deadline (s), weight."""

    rate_hz: float
    deadline_s: float
    weight: float = 1.0


@dataclass
class FrameResult:
    """The one outcome of a frame."""

    outcome: str = ''
    reason: str = ''
    depth: int = 0
    correct: bool = False
    latency: float = float('nan')
    stream: int = 0


@dataclass
class SimResult:
    """Per-frame outcomes and the policy's decision times."""

    policy: str
    frames: List[FrameResult]
    decision_s: List[float] = field(default_factory=list)   # the worker's, per boundary
    busy_s: float = 0.0
    span_s: float = 0.0
    planner: str = 'inline'        # thread, inline or free (see ``simulate``)
    planner_s: List[float] = field(default_factory=list)    # the planner thread's, per plan
    boundary: Optional[object] = None    # BoundaryStats of the off-path planner
    source: str = ''               # the oracle: which run was best

    def summary(self) -> Dict:
        """Rates as fractions of all frames; a miss or a drop counts as wrong."""
        n = len(self.frames)
        outcomes = [f.outcome for f in self.frames]
        published = [f for f in self.frames if f.outcome in (ON_TIME, LATE)]
        drops = {r: sum(1 for f in self.frames if f.outcome == DROPPED and f.reason == r)
                 for r in DROP_REASONS}
        depth_hist = [sum(1 for f in published if f.depth == d)
                      for d in range(1, 1 + max([f.depth for f in published] + [0]))]
        lat = np.array([f.latency for f in published]) * 1000.0
        dec = np.array(self.decision_s) * 1000.0
        return {
            'policy': self.policy,
            'frames': n,
            'on_time': outcomes.count(ON_TIME),
            'late': outcomes.count(LATE),
            'dropped': outcomes.count(DROPPED),
            'drops_by_reason': {k: v for k, v in drops.items() if v},
            'accuracy': sum(f.correct for f in self.frames if f.outcome == ON_TIME) / max(n, 1),
            'miss_rate': outcomes.count(LATE) / max(n, 1),
            'drop_rate': outcomes.count(DROPPED) / max(n, 1),
            'mean_depth': float(np.mean([f.depth for f in published])) if published else 0.0,
            'depth_histogram': depth_hist,
            'latency_ms_p50': float(np.percentile(lat, 50)) if lat.size else None,
            'latency_ms_p99': float(np.percentile(lat, 99)) if lat.size else None,
            'decision_ms_p50': float(np.percentile(dec, 50)) if dec.size else 0.0,
            'decision_ms_p99': float(np.percentile(dec, 99)) if dec.size else 0.0,
            'decision_share': float(dec.sum() / 1000.0 / self.span_s) if self.span_s else 0.0,
            'utilisation': self.busy_s / self.span_s if self.span_s else 0.0,
            'planner': self.planner,
            **self._planner_summary(),
        }

    def _planner_summary(self) -> Dict:
        out: Dict = {}
        if self.planner_s:
            ps = np.array(self.planner_s) * 1000.0
            out.update(planner_ms_p50=float(np.percentile(ps, 50)),
                       planner_ms_p99=float(np.percentile(ps, 99)), plans=len(ps))
        b = self.boundary
        if b is not None and b.boundaries:
            n = b.boundaries
            out.update(boundary_mandatory=b.mandatory / n, boundary_exact=b.exact / n,
                       boundary_stale=b.stale / n, boundary_fallback=b.fallback / n)
        if self.source:
            out['oracle_source'] = self.source
        return out


def make_streams(profile: ModelProfile, load: float, cameras: int = 4,
                 deadline_periods: float = 2.0, weights: Optional[List[float]] = None,
                 rate_ratios: Optional[List[float]] = None) -> List[Stream]:
    """
    Streams whose total demand is ``load`` times the full-depth capacity.

    With equal rates (default) each camera runs at load / (cameras x full-depth time);
    ``rate_ratios`` gives cameras different rates with the same total demand.
    """
    if load <= 0 or cameras < 1:
        raise ValueError('load must be > 0 and cameras >= 1')
    ratios = np.array(rate_ratios or [1.0] * cameras, dtype=float)
    total_rate = load / profile.full_depth_mean()
    rates = total_rate * ratios / ratios.sum()
    weights = weights or [1.0] * cameras
    return [Stream(float(r), deadline_periods / float(r), float(w))
            for r, w in zip(rates, weights)]


def make_arrivals(streams: List[Stream], frames: int, kind: str, rng: np.random.Generator,
                  jitter: float = 0.05, burst: int = 4) -> List[tuple]:
    """(time, stream) of the first ``frames`` arrivals of all streams together."""
    if kind not in ARRIVALS:
        raise ValueError(f'arrival process must be one of {ARRIVALS}')
    out = []
    per = frames // len(streams) + 2
    for s, st in enumerate(streams):
        period = 1.0 / st.rate_hz
        if kind == 'poisson':
            times = np.cumsum(rng.exponential(period, per))
        else:
            times = rng.uniform(0, period) + period * np.arange(per)
            if kind == 'burst':   # groups of `burst` frames released together
                times = times - (np.arange(per) % burst) * period * 0.95
            times = times + rng.normal(0, jitter * period, per).clip(-0.4 * period,
                                                                     0.4 * period)
        out.extend((float(t), s) for t in times)
    out.sort()
    return out[:frames]


PLANNERS = ('auto', 'thread', 'inline')
CLOCKS = {'cpu': time.thread_time, 'wall': time.perf_counter}


def simulate(profile: ModelProfile, trace: Trace, policy: Policy, streams: List[Stream],
             frames: int = 3000, seed: int = 0, arrival: str = 'periodic',
             charge_decisions: bool = True, arrivals: Optional[List[tuple]] = None,
             samples: Optional[np.ndarray] = None, planner: str = 'auto',
             decision_clock: str = 'cpu') -> SimResult:
    """
    Run one policy on one arrival process; return every frame's outcome.

    ``arrivals`` ((time s, stream) pairs in time order) and ``samples`` (the trace row of
    each arrival) replace the generated process, e.g. to replay a recorded bag.

    How decisions are charged (``planner``; see ``anytime_infer.scheduler.planner``):

    * ``auto`` (default): ``thread`` for the DP policies where one inline decision,
      measured here before the run, costs 0.1 of a mean stage or more
      (``planner.choose_planner``), else ``inline``.
    * ``thread`` (policies that plan off the critical path, i.e. the DP ones):
      a planner thread with a core of its own. When a stage starts, the state at that
      moment is posted; the planner, when free, takes the newest posted state and its
      plan becomes usable at (its start + its measured wall time). The worker is charged
      its boundary work (posting events, lookup, guards, the safe action) in full; it
      never waits for the planner (a plan not ready yet means the older plan or the safe
      action). Other policies decide inline, charged.
    * ``inline``: the whole decision at the boundary, charged to the worker (one core).
    * ``charge_decisions=False``: decisions inline and free: the bound.

    ``decision_clock``: ``cpu`` (default) measures the worker's and the planner's work as
    the CPU time of the thread doing it (``time.thread_time``), i.e. what it costs on a
    core of its own, so that other processes on a shared machine do not inflate it by
    preempting the simulator; ``wall`` measures wall time (``time.perf_counter``), as a
    node that shares its cores would see it. Either way the whole work is charged.
    """
    # The collector would pause inside whichever decision allocates when it runs and
    # charge the simulator's own garbage to it: it runs between simulations instead.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _simulate(profile, trace, policy, streams, frames, seed, arrival,
                         charge_decisions, arrivals, samples, planner, decision_clock)
    finally:
        if enabled:
            gc.enable()


def _simulate(profile, trace, policy, streams, frames, seed, arrival, charge_decisions,
              arrivals, samples, planner, decision_clock) -> SimResult:
    if planner not in PLANNERS:
        raise ValueError(f'planner must be one of {PLANNERS}')
    if decision_clock not in CLOCKS:
        raise ValueError(f'decision clock must be one of {tuple(CLOCKS)}')
    clock = CLOCKS[decision_clock]
    tare = clock_tare(clock)
    if planner == 'auto':
        planner = 'inline'
        if charge_decisions and getattr(policy, 'contingent', False):
            planner = choose_planner(profile, clock)[0]
    best_of = getattr(policy, 'best_of', None)
    if best_of:
        return _best_of(profile, trace, policy, best_of, streams, frames, seed, arrival,
                        charge_decisions, arrivals, samples, planner, decision_clock)
    if not charge_decisions:
        policy.free_decisions = True      # the bound: nothing is planned for decisions
    if trace.num_exits != profile.num_stages:
        raise ValueError(f'trace has {trace.num_exits} exits, profile {profile.num_stages}')
    rng = np.random.default_rng(seed)
    if arrivals is None:
        arrivals = make_arrivals(streams, frames, arrival, rng)
    if samples is None:
        samples = rng.integers(0, len(trace.samples), len(arrivals))
    sample_rng = np.random.default_rng(seed + 1)   # stage times apart from arrivals
    results = [FrameResult(stream=s) for _, s in arrivals]
    pending: Dict[int, Task] = {}
    deadlines: List[tuple] = []
    decisions: List[float] = []
    now, ai, busy = 0.0, 0, 0.0
    n_arr = len(arrivals)
    first_arrival = arrivals[0][0] if arrivals else 0.0
    offpath = charge_decisions and planner == 'thread' and \
        getattr(policy, 'contingent', False)
    link = OffPathPlanner(policy, clock) if offpath else None
    # Inline, the compiled DP decides on slot arrays that the worker keeps up to date as
    # tasks arrive, run and leave (``InlineLink``), as the executor's inline mode does:
    # that upkeep and the decision are charged at each boundary.
    inline = InlineLink(policy) if not offpath and decides_on_slots(policy) else None
    fresh: List[Task] = []          # admitted since the last boundary (posted by the worker)
    gone: List[int] = []            # published at their deadline (posted by the watcher)
    planner_s: List[float] = []
    inflight: List[tuple] = []      # (ready at, plan), in the order made
    planner_free = -math.inf
    snap: Optional[tuple] = None    # (seq, posted at) not yet planned

    def publish(task: Task, at: float) -> None:
        res = results[task.task_id]
        res.depth = task.stages_done
        res.latency = at - task.arrival
        res.outcome = ON_TIME if at <= task.deadline + 1e-12 else LATE
        res.correct = bool(trace.correct[samples[task.task_id], task.stages_done - 1])
        del pending[task.task_id]

    def drop(task_id: int, reason: str) -> None:
        res = results[task_id]
        res.outcome, res.reason, res.latency = DROPPED, reason, float('nan')
        del pending[task_id]

    def advance(to: float) -> None:
        nonlocal now, ai
        # Anytime: tasks whose deadline passes by `to` are published then, at their depth.
        if policy.anytime:
            while deadlines and deadlines[0][0] <= to:
                d, tid = heapq.heappop(deadlines)
                task = pending.get(tid)
                if task is not None and task.stages_done >= 1:
                    publish(task, d)
                    gone.append(tid)
        now = max(now, to)
        while ai < n_arr and arrivals[ai][0] <= now:
            t_arr, s = arrivals[ai]
            st = streams[s]
            task = Task(ai, s, t_arr, t_arr + st.deadline_s, profile.num_stages, st.weight,
                        stamp=t_arr,
                        exit_correct=list(trace.correct[samples[ai]]))
            pending[ai] = task
            fresh.append(task)
            if policy.anytime:
                heapq.heappush(deadlines, (task.deadline, ai))
            ai += 1

    def pump() -> None:
        """Run the planner thread up to `now`: the newest posted state when it is free."""
        nonlocal planner_free, snap
        if snap is not None and planner_free <= now:
            seq, posted = snap
            snap = None
            start = max(planner_free, posted)
            plan = link.plan(seq, publish=False)   # its time on the planner's clock
            if plan is not None:
                plan.planner_s = max(plan.planner_s - tare, 0.0)
            if plan is not None:
                planner_s.append(plan.planner_s)
                planner_free = start + plan.planner_s
                inflight.append((planner_free, plan))
        while inflight and inflight[0][0] <= now:
            link.ready = inflight.pop(0)[1]

    ended: List[int] = []
    while ai < n_arr or pending:
        if not pending:
            policy.note_idle(now)
            advance(arrivals[ai][0])
            continue
        if link is not None:
            pump()
            # The worker's boundary: post what happened since the last one (the outcomes
            # of the stage that ended, frames admitted, results published at their
            # deadline), then look the plan up. All of it is charged.
            t0 = clock()
            dec = link.boundary(now, pending, ended, fresh, gone)
            spent = max(clock() - t0 - tare, 0.0)
            link.boundary_time(spent)
        elif inline is not None:
            t0 = clock()
            dec = inline.boundary(now, pending, ended, fresh, gone)
            spent = max(clock() - t0 - tare, 0.0)
        else:
            t0 = clock()
            dec = policy.decide(now, pending.values())
            spent = max(clock() - t0 - tare, 0.0)
        gone.clear()
        fresh.clear()
        decisions.append(spent)
        if charge_decisions:
            busy += spent
            advance(now + spent)
        for tid, reason in dec.drop:
            if tid in pending:
                drop(tid, reason)
        for tid in dec.finish:
            if tid in pending:
                publish(pending[tid], now)
        run = [pending[t] for t in dec.run if t in pending]
        if link is not None and dec.run:
            snap = (link.seq, now)
            pump()                                # a free planner starts at once
        ended = []
        if run:
            stage = run[0].stages_done + 1
            lat = profile.latency[stage - 1]
            b = len(run)
            stats = lat.get(b) or lat[1]
            dur = float(stats.sample(sample_rng)) * (1.0 if b in lat else b)
            busy += dur
            policy.times.observe(stage, b, dur)
            advance(now + dur)
            for task in run:
                if task.task_id in pending:   # not published at its deadline meanwhile
                    task.stages_done = stage
                    task.confidences.append(
                        float(trace.confidence[samples[task.task_id], stage - 1]))
                    ended.append(task.task_id)
            continue
        if dec.drop or dec.finish:
            continue
        # Nothing to do now: wait for the next arrival or deadline.
        nxt = [arrivals[ai][0]] if ai < n_arr else []
        nxt += [t.deadline + 1e-9 for t in pending.values() if t.deadline + 1e-9 > now]
        if not nxt:   # the policy keeps tasks it will never run: end them, counted
            for tid in list(pending):
                drop(tid, SHUTDOWN)
            break
        advance(min(nxt))
    span = max(now - first_arrival, 1e-9)
    mode = 'thread' if link is not None else ('inline' if charge_decisions else 'free')
    return SimResult(policy.name, results, decisions, busy, span, mode, planner_s,
                     link.stats if link is not None else None)


def clock_tare(clock, n: int = 200) -> float:
    """Return what reading the clock twice costs (the simulator's, not work)."""
    samples = []
    for _ in range(n):
        t0 = clock()
        samples.append(clock() - t0)
    return float(np.median(samples))


def _best_of(profile, trace, policy, best_of, streams, frames, seed, arrival,
             charge_decisions, arrivals, samples, planner, decision_clock) -> SimResult:
    """
    Run the oracle: the best of its clairvoyant run and of the online policies it names.

    The clairvoyant DP (exact correctness per exit) still plans on stage-time
    percentiles over a receding horizon without knowing future arrivals, so an online
    policy can beat it on some runs; the best of both, on the same arrivals, samples and
    stage-time draws, is an upper bound of every policy it includes.
    """
    runs = []
    for make in [None] + list(best_of):
        pol = policy if make is None else make()
        if make is None:
            pol.best_of = None
        try:
            runs.append(simulate(profile, trace, pol, streams, frames, seed, arrival,
                                 charge_decisions, arrivals, samples, planner,
                                 decision_clock))
        finally:
            if make is None:
                pol.best_of = best_of
    best = max(runs, key=lambda r: r.summary()['accuracy'])
    best.source = best.policy
    best.policy = policy.name
    return best
