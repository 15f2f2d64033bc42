"""
Decisions off the worker's critical path: contingent plans made while a stage runs.

The DP of ``imprecise_dp`` costs about as much as a stage of a small network on a fast
accelerator. So the worker does not run it between stages. Instead:

* **While a stage runs** a planner (a thread, or the simulator's model of one) takes the
  state as it was when that stage started and computes a :class:`ContingentPlan`: for
  every outcome of the running exit (its confidence bin, the only thing the utility reads
  of it) the DP's plan once that stage has ended: the tasks it plans (the earliest-deadline
  task and its window, in EDF order), their planned depths, and the mandatory block
  reserved behind them. The DP is the same exact DP as ``ImpreciseDP.plan_depths``
  (:func:`contingent_entry` evaluates it for all outcomes at once in one compiled call,
  ``dpkernel.plan_window``, over suffix tables shared by all outcomes).
* **At the stage boundary**, if the plan made for this very boundary is ready, the
  worker looks it up by the bin of the exit that just ran and checks cheap guards against
  what the plan could not know: the front task's next stage must fit its deadline and
  leave room for every mandatory stage still waiting, including those of frames that
  arrived during the stage (an O(1) conservative reserve). An older plan is followed only
  when no frame arrived since its snapshot.
* **Otherwise** (the planner is still busy, a guard failed, the front is not in the plan)
  the worker takes a cheap safe action and lets the planner replan from the next stage's
  start: mandatory stages that cannot fit are dropped; the earliest-deadline task without
  a result runs its mandatory stage (the DP does the same whatever its plan); a front with
  a result goes deeper or is published as the DP's *decision table* says (the DP's most
  recent value-driven decision for a front at the same exit and confidence bin, merged
  from every plan by the planner) if its next stage fits its deadline and the mandatory
  stages waiting; with no table entry, mandatory stages first, else the front deeper if
  it fits. It never runs the DP inline. Everything is amortised O(log n): EDF heaps with
  lazy deletion, no scan of the pending tasks.
* Where to plan at all: ``choose_planner`` measures one inline decision here; where it
  costs less than a mean stage the DP decides inline (``--planner auto``).

API (single writer on each side):

Worker thread, which owns the tasks::

    link = OffPathPlanner(policy)          # policy.contingent (imprecise_dp, _flat, oracle)
    link.arrived(task)                     # when a task is admitted
    t0 = time.perf_counter()
    dec = link.decide(now, tasks_by_id, ended)  # at every boundary; ended: ids just run
    ...apply dec.drop / dec.finish...
    link.removed(task_id)                  # each task published or dropped (any thread)
    link.stage_start(now, dec.run, stage)  # just before running dec.run's stage
    link.boundary_time(time.perf_counter() - t0)   # the worker's cost: planned for
    ...run the stage...
    link.stage_done(task_id, stage, conf)  # for each task of the batch, after the stage

(``link.boundary(now, tasks, ended, admitted, gone)`` posts a boundary's events, decides,
posts the decision's removals and the next stage start in one call: the simulator's way.)

Planner thread::

    while running:
        seq = link.wait_for_stage(timeout)   # the newest stage start posted, or None
        if seq is not None:
            link.plan(seq)                   # snapshot up to that start, prepare, publish

``link.plan`` replays the worker's events up to that stage start into its own copy of the
tasks (the planner never reads the worker's tasks, so it cannot see a result the worker
has not produced yet), calls ``policy.prepare(now, tasks, running_ids, stage)`` and hands
the plan over by one reference assignment (atomic in CPython). The worker reads that
reference at the next boundary. The event deque and a wake-up queue are the only other
shared objects (``deque.append``/``popleft`` and ``queue.SimpleQueue`` are thread-safe; a
``SimpleQueue.put`` that wakes the sleeping planner cost the worker ~6 us of CPU on this
machine, a ``Condition.notify`` ~12 us). ``policy.times`` (StageTimes) is read by the
planner and updated by the executor (its delivery thread records stage runs); a plan made
just before a stage-time update uses the previous estimate, which the deadline guard then
checks against the real clock.
"""
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
import heapq
import math
from math import isfinite
import queue
import time
from typing import Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from anytime_infer.scheduler.dp import INF
from anytime_infer.scheduler.dpkernel import pack, plan_window, prepare_plan
from anytime_infer.scheduler.task import Decision, INFEASIBLE, Task
from anytime_infer.scheduler.timing import planned
from anytime_infer.scheduler.utility import Utility
import numpy as np

EPS = 1e-9


@dataclass
class Targets:
    """One plan: the planned tasks in EDF order, their depths and the block behind them."""

    order: Tuple[int, ...]
    depth: Tuple[int, ...]
    reserve: float = INF          # latest start of every mandatory stage still to run
    block: int = 0                # how many there are
    want: Dict[int, int] = field(default_factory=dict)   # depth by task id
    last: float = -INF            # the latest deadline among them

    def __post_init__(self) -> None:
        if not self.want:
            self.want = dict(zip(self.order, self.depth))


@dataclass
class Entry:
    """The plans for every outcome of one exit: exit ``done`` of task ``task_id``."""

    task_id: int
    done: int
    edges: Optional[Sequence[float]]    # None: the outcome does not change the plan
    rows: List[Targets]
    # Whether the task's next stage could be planned at all (its deadline and the
    # others' allow it): a plan that stops it when it could not go on says nothing of
    # what the DP prefers (the decision table records only the others).
    could_go_on: bool = True

    def row(self, conf: Optional[float]) -> Optional[Targets]:
        """Return the plan for the exit's real confidence (None if it is not a number)."""
        b = _bin(self.edges, conf)
        return self.rows[b] if b >= 0 else None


@dataclass
class ContingentPlan:
    """What the planner computed from the state at one stage start."""

    seq: int                       # the stage start (snapshot) it saw
    made_at: float                 # that stage start's time
    entries: Dict[Tuple[int, int], Entry]
    first: Optional[Tuple[int, int]]   # the entry of the running stage (None if idle)
    cumt: List[float]              # planned time to reach depth d from depth 0
    planner_s: float = 0.0         # wall time spent making it
    # The DP's decision for a front task by (exit k, bin of exit k): deeper or not. The
    # worker keeps the newest of each and uses it for a front no plan covers.
    table: List[Tuple[int, Optional[Sequence[float]], int, bool]] = field(
        default_factory=list)
    merged: Optional[dict] = None  # all plans' tables so far (set by OffPathPlanner.plan)

    def lookup(self, task_id: int, done: int, conf: Optional[float]) -> Optional[Targets]:
        """Return the plan once exit ``done`` of ``task_id`` gave ``conf`` (None: none)."""
        e = self.entries.get((task_id, done))
        return None if e is None else e.row(conf)


# -- planning (planner side) ----------------------------------------------------------------
def _targets(depth: Dict[int, int], order: Sequence[Task], mandatory: Tuple[float, int]
             ) -> Targets:
    ids = tuple(depth)        # insertion order: the EDF order of ``order``
    return Targets(ids, tuple(depth.values()), mandatory[0], mandatory[1], depth,
                   mandatory[2])


def _block(pol, tasks: Sequence[Task]) -> Tuple[float, int, float]:
    """Return the latest start, count and last deadline of the mandatory stages (EDF)."""
    p1 = pol.times.plan(1)
    reserve, need, n, last = INF, 0.0, 0, -INF
    for t in tasks:
        if t.stages_done == 0:
            need += p1
            n += 1
            reserve = min(reserve, t.deadline - need)
            last = t.deadline
    return reserve, n, last


def _rep_conf(edges: Sequence[float], b: int) -> float:
    """Return a confidence inside bin b (any value there gives the same utility)."""
    return 0.5 * (edges[b] + min(edges[b + 1], 1.0))


def static_targets(pol, start: float, tasks: Sequence[Task]) -> Targets:
    """Return the DP's plan for the tasks as they are (no outcome pending)."""
    _, chosen, _, _ = pol._prelude(start, tasks)
    if not chosen:
        return Targets((), ())
    depth, rest, _ = pol.plan_depths(start, chosen)
    return _targets(depth, chosen[:1 + len(rest)], _block(pol, chosen))


def contingent_entry(pol, start: float, chosen: List[Task], x: Task, k: int) -> Entry:
    """
    Return the DP's plan at ``start`` for every outcome of exit ``k`` of front ``x``.

    ``chosen``: the tasks planned (EDF, none to shed), ``x`` first, ``x.stages_done ==
    k``. Exact: row b is what ``ImpreciseDP.plan_depths`` returns with x's confidence in
    bin b: one compiled call plans every outcome over the same suffix tables
    (``dpkernel.plan_window``).
    """
    edges, mat = pol.utility.outcomes(x, k)
    rest, reserve = pol._window(chosen[1:])
    mandatory = _block(pol, chosen[1:])
    keys = [pol._key(t) for t in rest]
    rest_opts = pol._cached_options(keys, rest)
    n = pol.n
    lo = max(k, 1)
    depths = list(range(lo, n + 1))
    times, acc = [], 0.0
    for d in depths:
        if d > k:
            acc += pol.times.plan(d)
        times.append(acc)
    rew = x.weight * mat[:, depths]                       # outcomes x options
    picked, _, level = plan_window(start, reserve, pol.quantum, x.deadline,
                                   np.asarray(times, dtype=float), np.ascontiguousarray(rew),
                                   *pack(rest_opts, n), pol.deepen_slack)
    order = [x] + rest
    out: List[Optional[Targets]] = []
    made: Dict[tuple, Targets] = {}
    for p in picked.tolist():
        key = tuple(p)
        tg = made.get(key)
        if tg is None:
            depth = {x.task_id: depths[p[0]]}
            for t, opt, i in zip(rest, rest_opts, p[1:]):
                depth[t.task_id] = opt.depths[i]
            tg = made[key] = _targets(depth, order, mandatory)
        out.append(tg)
    # Whether x's next stage could be planned at all (its deadline and the others' allow
    # it): then a plan that stops x there is the DP's preference (the decision table).
    go_on = k < n and (len(level) < 2 or bool(level[1] >= 0))
    return Entry(x.task_id, k, edges, out, go_on)


def _decision_table(plan: ContingentPlan, now: float, times, utility, state_of) -> None:
    """
    Add the plan's decisions for a front task by (exit, bin) to ``plan.table``.

    For the enumerated front every bin; for a known front (an entry whose outcome does not
    matter) its own bin, from ``state_of(task id)``: (stages done, stages, deadline, last
    confidence), or None where the task is not known. A stop is recorded only where the
    front could have gone on (its deadline and the others' allowed it).
    """
    for (tid, k), e in plan.entries.items():
        for b, row in enumerate(e.rows):
            if not row.order:
                continue
            f = row.order[0]
            if f == tid:                 # the enumerated front: every bin
                deeper = row.want[f] > k
                if deeper or e.could_go_on:
                    plan.table.append((k, e.edges, b, deeper))
            elif e.edges is None:        # the known front: its own bin
                st = state_of(f)
                if st is None:
                    continue
                k_f, stages, deadline, conf = st
                if 1 <= k_f < stages:
                    deeper = row.want[f] > k_f
                    end = now + times.plan(k_f + 1)
                    if deeper or (end <= deadline and end <= row.reserve):
                        ed = None if utility.flat else utility.edges[k_f - 1]
                        plan.table.append((k_f, ed, _bin(ed, conf), deeper))


def prepare(pol, now: float, tasks: Sequence[Task], running: Sequence[int], stage: int,
            seq: int = 0) -> ContingentPlan:
    """
    Make a contingent plan from the state at a stage start (see the module docstring).

    ``tasks``: the pending tasks as they were when the stage of ``running`` (at
    ``stage``) started at ``now``; they are not modified. The plan is for the boundary
    at the end of that stage, assumed at its planned (high-percentile) time, and, while
    the first running task stays the front and goes deeper, for each of its later
    boundaries too (its plan after exit j depends on exit j's bin only: one entry per
    exit, not one per path).
    """
    t0 = time.perf_counter()
    times = pol.times
    cumt = [0.0]
    for d in range(1, pol.n + 1):
        cumt.append(cumt[-1] + times.plan(d))
    entries: Dict[Tuple[int, int], Entry] = {}
    first = None
    by_id = {t.task_id: t for t in tasks}
    run = [by_id[i] for i in running if i in by_id]
    if run:
        # The boundary is planned at the stage's expected end (its median time): later
        # stages are planned on the high percentile, and the worker's guards check the
        # real time; a stage that ends early would otherwise leave its slack unplanned.
        start = now + expected_time(times, stage, len(run))
        hyp: Dict[int, Task] = {}
        for j, t in enumerate(run):
            # The first task's outcome is enumerated; batch mates' outcomes are unknown
            # (NaN: planned on mean accuracies) and their plan is followed open-loop.
            h = Task(t.task_id, t.stream, t.arrival, t.deadline, t.num_stages, t.weight,
                     t.stamp, stage, list(t.confidences) + [0.5 if j == 0 else math.nan])
            hyp[t.task_id] = h
        state = [hyp.get(t.task_id, t) for t in tasks]
        x = hyp[run[0].task_id]
        _, chosen, _, _ = pol._prelude(start, state)
        first = (x.task_id, stage)
        if chosen and chosen[0] is x:
            entries[first] = contingent_entry(pol, start, chosen, x, stage)
            k = stage
            while k + 1 < min(pol.n, stage + pol.chain):   # x goes on: its next exits
                k += 1
                start += times.plan(k)
                x = Task(x.task_id, x.stream, x.arrival, x.deadline, x.num_stages,
                         x.weight, x.stamp, k, list(x.confidences) + [0.5])
                chosen = [x] + chosen[1:]
                entries[(x.task_id, k)] = contingent_entry(pol, start, chosen, x, k)
        else:
            # x is not the front once its stage ends: its outcome is not enumerated.
            x.confidences[-1] = math.nan
            entries[first] = Entry(x.task_id, stage, None,
                                   [static_targets(pol, start, state)])
    else:
        entries[(-1, 0)] = Entry(-1, 0, None, [static_targets(pol, now, tasks)])
        first = (-1, 0)
    plan = ContingentPlan(seq, now, entries, first, cumt)

    def state_of(f: int):
        t = by_id.get(f)
        return None if t is None else (t.stages_done, t.num_stages, t.deadline,
                                       t.last_confidence)
    _decision_table(plan, now, times, pol.utility, state_of)
    plan.planner_s = time.perf_counter() - t0
    return plan


class Mirror:
    """
    The planner's own copy of the pending tasks, in slot arrays (``prepare_arrays``).

    ``f[:, s]``: deadline, arrival, weight, last confidence (NaN before stage 1) and
    stamp of the task in slot s; ``i[:, s]``: its id, stages done, number of stages,
    stream and whether the slot holds a pending task (1) or is free (0). Written by the
    planner only (from the events the worker posted); a slot is reused once its task is
    removed.
    """

    DEADLINE, ARRIVAL, WEIGHT, CONF, STAMP = range(5)
    ID, DONE, STAGES, STREAM, ALIVE = range(5)

    def __init__(self, capacity: int = 64) -> None:
        self.slot: Dict[int, int] = {}
        self._free: List[int] = []
        self._confs: Dict[int, List[float]] = {}
        self.size = 0
        self.f = np.zeros((5, capacity))
        self.i = np.zeros((5, capacity), dtype=np.int64)

    def add(self, t: Task, done: int, confs: Sequence[float]) -> None:
        """Take a task as posted (its fields that never change and its progress)."""
        if t.task_id in self.slot:
            self.remove(t.task_id)
        if self._free:
            s = self._free.pop()
        else:
            if self.size == self.f.shape[1]:
                self.f = np.concatenate((self.f, np.zeros_like(self.f)), axis=1)
                self.i = np.concatenate((self.i, np.zeros_like(self.i)), axis=1)
            s = self.size
            self.size += 1
        self.slot[t.task_id] = s
        self.f[:, s] = (t.deadline, t.arrival, t.weight,
                        confs[-1] if done and confs else math.nan, t.stamp)
        self.i[:, s] = (t.task_id, done, t.num_stages, t.stream, 1)
        self._confs[t.task_id] = list(confs)

    def stage_done(self, task_id: int, stage: int, conf: float) -> None:
        """Record that exit ``stage`` of a task gave ``conf``."""
        s = self.slot.get(task_id)
        if s is not None:
            self.i[1, s] = stage
            self.f[3, s] = conf
            self._confs[task_id].append(conf)

    def remove(self, task_id: int) -> None:
        """Forget a published or dropped task."""
        s = self.slot.pop(task_id, None)
        if s is not None:
            self.i[4, s] = 0
            self._free.append(s)
            del self._confs[task_id]

    def __contains__(self, task_id: int) -> bool:
        return task_id in self.slot

    def task(self, task_id: int) -> Task:
        """Return a new Task with the posted state of one task."""
        s = self.slot[task_id]
        f, i = self.f[:, s].tolist(), self.i[:, s].tolist()
        return Task(task_id, i[3], f[1], f[0], i[2], f[2], f[4], i[1],
                    list(self._confs[task_id]))

    def tasks(self) -> List[Task]:
        """Return new Tasks of every pending task (for a policy without arrays)."""
        return [self.task(i) for i in self.slot]


def prepare_arrays(pol, now: float, mirror: Mirror, running: Sequence[int], stage: int,
                   seq: int = 0) -> ContingentPlan:
    """
    Return what :func:`prepare` returns, computed from slot arrays in one compiled call.

    Same plan, entries and decision table as ``prepare(pol, now, mirror.tasks(), ...)``
    (a test compares them); several times cheaper, so that the plan for a boundary is
    ready when a short stage ends.
    """
    t0 = time.perf_counter()
    times, n = pol.times, pol.n
    plan_s, cumt = planned(times, n)
    slot = mirror.slot
    run_ids = [i for i in running if i in slot]
    run = np.array([slot[i] for i in run_ids], dtype=np.int64)
    start = now + expected_time(times, stage, len(run)) if run_ids else now
    u = pol.utility
    mean, cond, edges, nbins = u.tables()
    mode, ids, distinct, rowmap, reserve, block, last, go_on = prepare_plan(
        start, mirror.f, mirror.i, run, stage if run_ids else 0, plan_s, pol.quantum,
        pol.horizon, u.flat, mean, cond, edges, nbins, pol.deepen_slack)
    ids = tuple(ids.tolist())
    # One Targets per distinct plan (most bins share one), in the bins' order.
    made = [Targets(ids, key, reserve, block, dict(zip(ids, key)), last)
            for key in map(tuple, distinct.tolist())]
    rows = [made[j] for j in rowmap.tolist()]
    if run_ids:
        x = run_ids[0]
        first = (x, stage)
        if mode == 1:
            entry = Entry(x, stage, None if u.flat else u.edges[stage - 1], rows, bool(go_on))
        else:
            entry = Entry(x, stage, None, rows)
    else:
        first = (-1, 0)
        entry = Entry(-1, 0, None, rows)
    plan = ContingentPlan(seq, now, {first: entry}, first, cumt)

    def state_of(f: int):
        s = slot.get(f)
        if s is None:
            return None
        return (int(mirror.i[Mirror.DONE, s]), int(mirror.i[Mirror.STAGES, s]),
                float(mirror.f[Mirror.DEADLINE, s]), float(mirror.f[Mirror.CONF, s]))
    _decision_table(plan, now, times, u, state_of)
    plan.planner_s = time.perf_counter() - t0
    return plan


# Plan off the critical path when an inline decision costs this much of a mean stage. In
# the simulator the planner thread beat inline decisions at every ratio measured
# (0.05-0.35, 2x and 3x); at 0.24, near the old 0.25, a heavy-first-stage model lost
# 5 points inline at 3x. The bundled models on this CPU (0.04-0.08) stay inline,
# where a planner thread competes with the stage for the machine's two cores.
AUTO_RATIO = 0.1


def inline_cost(profile, clock=time.perf_counter, tasks: int = 12, runs: int = 40) -> float:
    """
    Measure what one inline DP decision costs here (s, 25th percentile), loaded state.

    ``tasks`` pending tasks, deadlines a stage or two apart, some with results; a new
    policy each run (no cached table helps), so this is the decision's full cost. Timed
    as the executor and the simulator decide inline: on the slot arrays of an
    ``InlineLink`` that the tasks were posted to as they came.
    """
    from anytime_infer.scheduler.policies import ImpreciseDP
    from anytime_infer.scheduler.timing import StageTimes
    rng = np.random.default_rng(0)
    stage = profile.full_depth_mean() / profile.num_stages
    spent = []
    for r in range(runs):
        state = []
        for i in range(tasks):
            t = Task(i, i % 4, 0.0, stage * (1.5 * i + 2.0), profile.num_stages)
            t.stages_done = 1 if i == 0 else int(rng.integers(0, 3))
            t.confidences = [float(rng.random()) for _ in range(t.stages_done)]
            state.append(t)
        link = InlineLink(ImpreciseDP(profile, StageTimes(profile)))
        for t in state:
            link.arrived(t)
        by_id = {t.task_id: t for t in state}
        t0 = clock()
        link.decide(0.0, by_id)
        spent.append(clock() - t0)
    # A low quantile: other work on a shared machine only ever adds to a measurement.
    return float(np.percentile(spent, 25))


def choose_planner(profile, clock=time.perf_counter) -> Tuple[str, float]:
    """
    Pick how the DP decides from measured costs: ('thread' or 'inline', cost ratio).

    The ratio is one inline decision's measured cost over the mean stage time. Where it is
    small the DP decides at the boundary with everything known (the exact decision, cheap
    enough); where a decision costs ``AUTO_RATIO`` of a stage or more, it plans off the
    critical path and the worker only looks the plan up (measured: README, stop 23).
    """
    stage = profile.full_depth_mean() / profile.num_stages
    ratio = inline_cost(profile, clock) / stage
    return ('thread' if ratio >= AUTO_RATIO else 'inline'), ratio


def expected_time(times, stage: int, batch: int = 1) -> float:
    """Return the expected time (s) of a stage: its median, scaled as measured, + overhead."""
    return times.calibrated(stage, batch)[0] * times.scale(stage, batch) + times.overhead


def _bin(edges: Optional[Sequence[float]], conf: Optional[float]) -> int:
    """Bin of a confidence (0 where the outcome does not matter; -1 if not a number)."""
    if edges is None:
        return 0
    if conf is None or not math.isfinite(conf):
        return -1
    return min(max(bisect_right(edges, conf) - 1, 0), len(edges) - 2)


def heap_smallest(heap: List[tuple], k: int) -> List[tuple]:
    """Return the k smallest items of a heap, in order, in O(k log k), not O(len)."""
    out: List[tuple] = []
    if not heap:
        return out
    frontier = [(heap[0], 0)]
    n = len(heap)
    while frontier and len(out) < k:
        item, i = heapq.heappop(frontier)
        out.append(item)
        for c in (2 * i + 1, 2 * i + 2):
            if c < n:
                heapq.heappush(frontier, (heap[c], c))
    return out


def _smallest(heap: List[tuple], k: int) -> List[tuple]:
    """Return the k smallest items of a heap in order (a C sort while the heap is small)."""
    return sorted(heap)[:k] if len(heap) <= 64 else heap_smallest(heap, k)


# -- the link between worker and planner ------------------------------------------------------
@dataclass
class BoundaryStats:
    """What the worker did at its boundaries (counts)."""

    boundaries: int = 0
    mandatory: int = 0    # the front had no result yet: its mandatory stage (no plan needed)
    exact: int = 0        # the plan for this very boundary and outcome was ready
    stale: int = 0        # an older plan's targets were followed (guards held)
    fallback: int = 0     # no plan, or a guard failed: the cheap safe action
    plans: int = 0        # plans adopted
    guard_failed: int = 0
    extra: Dict[str, int] = field(default_factory=dict)


def decides_on_slots(policy) -> bool:
    """Whether a policy's own decision runs on slot arrays kept by an ``InlineLink``."""
    return bool(getattr(policy, 'slots', False) and getattr(policy, '_arrays', False))


class InlineLink:
    """
    The worker's end for a DP that decides inline, on slot arrays it keeps (one core).

    The same calls as ``OffPathPlanner``'s worker side, so that the executor keeps one
    path: arrivals, exits and removals are written to a ``Mirror`` as they happen, and
    ``decide`` runs the policy's compiled decision on its arrays
    (``ImpreciseDP.decide_slots``) instead of reading every pending task at every
    boundary. No planner thread; ``stage_start`` and ``wait_for_stage`` do nothing.
    """

    def __init__(self, policy) -> None:
        self.policy = policy
        self.stats = BoundaryStats()
        self._mirror = Mirror()

    def arrived(self, task: Task) -> None:
        """Take an admitted task (with its progress)."""
        self._mirror.add(task, task.stages_done, task.confidences)

    def removed(self, task_id: int) -> None:
        """Forget a published or dropped task."""
        self._mirror.remove(task_id)

    def stage_done(self, task_id: int, stage: int, conf: float) -> None:
        """Record exit ``stage`` of a task."""
        self._mirror.stage_done(task_id, stage, conf)

    def stage_start(self, now: float, run: Sequence[int], stage: int) -> int:
        """Nothing to plan meanwhile (returns 0)."""
        return 0

    def wait_for_stage(self, timeout: float) -> None:
        """No planner thread waits on this link: sleep, return None."""
        time.sleep(timeout)

    def decide(self, now: float, tasks: Mapping[int, Task],
               ended: Sequence[int] = ()) -> Decision:
        """Decide with everything known, on the kept arrays."""
        self.stats.boundaries += 1
        m = self._mirror
        # The whole arrays (C-contiguous, as the kernel is compiled for): slots past
        # ``size`` are zero, that is free.
        return self.policy.decide_slots(now, m.f, m.i, tasks)

    def boundary(self, now: float, tasks: Mapping[int, Task], ended: Sequence[int],
                 admitted: Sequence[Task] = (), gone: Sequence[int] = ()) -> Decision:
        """
        Post a boundary's events, decide, post the decision's removals (the simulator's way).

        What the executor's worker does around an inline decision, in one call, so that
        the simulator charges it all: ``OffPathPlanner.boundary``'s arguments.
        """
        for tid in gone:
            self.removed(tid)
        for tid in ended:
            t = tasks.get(tid)
            if t is not None:
                self.stage_done(tid, t.stages_done, t.confidences[-1])
        for t in admitted:
            self.arrived(t)
        d = self.decide(now, tasks, ended)
        for tid, _ in d.drop:
            self.removed(tid)
        for tid in d.finish:
            self.removed(tid)
        return d

    def boundary_time(self, seconds: float) -> None:
        """Nothing: the policy times its own decisions."""


class OffPathPlanner:
    """
    The worker's and the planner's ends of one policy (see the module docstring).

    The worker calls ``arrived``/``removed``/``stage_start``/``stage_done``/``decide``;
    the planner calls ``wait_for_stage``/``plan`` (or ``plan`` directly, as the
    simulator does, with the sequence number ``stage_start`` returned).
    """

    def __init__(self, policy, clock=time.perf_counter) -> None:
        self.policy = policy
        self.clock = clock          # what the worker's and the planner's work is timed by
        self.stats = BoundaryStats()
        # worker -> planner
        self._events: Deque[tuple] = deque()
        self._seq = 0
        self._wake: 'queue.SimpleQueue[int]' = queue.SimpleQueue()
        self._waiting = False
        # planner -> worker (one reference, replaced whole)
        self.ready: Optional[ContingentPlan] = None
        # planner side
        self._mirror = Mirror()
        # Whether batching can ever pay: some calibrated batch size runs a stage in less
        # time than its tasks one by one (uncalibrated sizes scale linearly: never).
        self._batch = bool(getattr(policy, 'batching', False)) and any(
            policy.times.calibrated(k, b)[1] < b * policy.times.calibrated(k, 1)[1]
            for k in range(1, policy.n + 1) for b in policy.profile.latency[k - 1] if b > 1)
        # The compiled planner where the policy's utility has arrays (not the oracle's).
        self.arrays = type(getattr(policy, 'utility', None)) is Utility and \
            getattr(policy, 'prepare', None) is not None
        self._planned_seq = 0
        self._ptable: Dict[int, Tuple[Optional[Sequence[float]], Dict[int, bool]]] = {}
        # worker side: EDF heaps with lazy deletion (a popped id that is gone is skipped)
        self._plan: Optional[ContingentPlan] = None
        self._targets: Optional[Targets] = None
        self._all: List[Tuple[float, int]] = []        # every admitted task
        self._mand: List[Tuple[float, int]] = []       # admitted, mandatory stage not run
        self._latest: Optional[float] = None   # cached _mandatory_latest (None: stale)
        self._arrivals: Deque[Tuple[int, float]] = deque()   # (seq, deadline) since plan
        self._new_n = 0              # arrivals the adopted plan did not see
        self._new_min = INF          # and their earliest deadline
        self._new_last = -INF        # the latest one's deadline
        self._new_sorted = True      # whether they arrived in deadline order
        self._new_term = INF         # min over them of deadline - rank x p1
        self._table: Dict[int, Tuple[Optional[Sequence[float]], Dict[int, bool]]] = {}
        self._confs: Dict[Tuple[int, int], float] = {}    # (task, exit) -> confidence
        self.follow_stale = False
        self._stale = False          # the adopted plan's targets are not looked up yet
        self._new_dirty = False      # the _new_* terms wait for a recount (plan adopted)

    # -- worker side ------------------------------------------------------------------------
    @property
    def seq(self) -> int:
        """Return the number of the last stage start posted."""
        return self._seq

    def arrived(self, task: Task) -> None:
        """Post that a task was admitted (before the next stage starts)."""
        self._arrive(task, self.policy.times.plan(1))

    def _arrive(self, task: Task, p1: float) -> None:
        done = task.stages_done
        self._events.append(('a', task, done, tuple(task.confidences) if done else ()))
        key = (task.deadline, task.task_id)
        heapq.heappush(self._all, key)
        if not done:
            heapq.heappush(self._mand, key)
            self._latest = None
        self._arrivals.append((self._seq, task.deadline))
        if not self._new_dirty:
            self._note_new(task.deadline, p1)

    def _note_new(self, deadline: float, p1: float) -> None:
        """Fold one frame the adopted plan did not see into the reserve terms (O(1))."""
        self._new_n += 1
        if deadline < self._new_last:
            self._new_sorted = False
        self._new_last = deadline
        if deadline < self._new_min:
            self._new_min = deadline
        # In deadline order, the i-th new mandatory stage must end by its deadline:
        # latest start of the new ones behind the planned block = min(dl_i - i p1).
        term = deadline - self._new_n * p1
        if term < self._new_term:
            self._new_term = term

    def removed(self, task_id: int) -> None:
        """Post that a task was published or dropped."""
        self._events.append(('r', task_id))

    def stage_done(self, task_id: int, stage: int, conf: float) -> None:
        """Post that exit ``stage`` of a task gave ``conf``."""
        self._events.append(('s', task_id, stage, conf))
        if stage == 1:
            self._latest = None
        # Kept a while: a plan adopted after its task was published still needs the
        # outcome it was made for.
        confs = self._confs
        confs[(task_id, stage)] = conf
        if len(confs) > 512:
            for key in list(confs)[:256]:
                del confs[key]

    def stage_start(self, now: float, run: Sequence[int], stage: int) -> int:
        """Post that a stage of ``run`` starts (a snapshot for the planner); return its number."""
        self._seq += 1
        self._events.append(('start', self._seq, now, tuple(run), stage))
        if self._waiting:                 # a planner thread sleeps in wait_for_stage
            self._wake.put(self._seq)
        return self._seq

    def boundary(self, now: float, tasks: Mapping[int, Task], ended: Sequence[int],
                 admitted: Sequence[Task] = (), gone: Sequence[int] = ()) -> Decision:
        """
        Post a boundary's events and decide, in one call (the worker's whole boundary).

        ``ended``: the tasks of the stage that just ended (their new results are in
        ``tasks``); ``admitted``: tasks admitted since the last boundary; ``gone``: tasks
        published or dropped since then (e.g. at their deadline). The decision's own
        drops and finishes, and the next stage's start, are posted too.
        """
        ev = self._events
        for tid in gone:
            ev.append(('r', tid))
        for tid in ended:
            t = tasks.get(tid)
            if t is not None:
                self.stage_done(tid, t.stages_done, t.confidences[-1])
        if admitted:
            p1 = self.policy.times.plan(1)
            for t in admitted:
                self._arrive(t, p1)
        d = self.decide(now, tasks, ended)
        for tid, _ in d.drop:
            ev.append(('r', tid))
        for tid in d.finish:
            ev.append(('r', tid))
        if d.run:
            self._seq += 1
            ev.append(('start', self._seq, now, tuple(d.run), tasks[d.run[0]].stages_done + 1))
            if self._waiting:
                self._wake.put(self._seq)
        return d

    def decide(self, now: float, tasks: Mapping[int, Task],
               ended: Sequence[int] = ()) -> Decision:
        """
        Decide at a stage boundary: plan lookup, guards, or the cheap safe action.

        ``tasks``: the pending tasks by id; ``ended``: the tasks of the stage that just
        ended (first one first). O(log n) amortised plus O(horizon).
        """
        st = self.stats
        st.boundaries += 1
        pol = self.policy
        plan = self.ready
        exact = False
        if plan is not self._plan:
            # _adopt, inlined (a new plan at nearly every boundary).
            self._plan = plan
            if plan is not None:
                st.plans += 1
                self._new_dirty = True    # frames it did not see: counted when needed
                self._targets = None
                self._stale = True        # its targets are found if the lookup misses
                if plan.merged is not None:
                    self._table = plan.merged
        if plan is not None and ended:
            tid = ended[0]
            t = tasks.get(tid)
            if t is not None:
                e = plan.entries.get((tid, t.stages_done))
                if e is not None:
                    # Entry.row, inlined (every boundary).
                    edges = e.edges
                    tg = None
                    if edges is None:
                        tg = e.rows[0]
                    else:
                        c = t.confidences[-1]
                        if isfinite(c):
                            b = bisect_right(edges, c) - 1
                            top = len(edges) - 2
                            tg = e.rows[0 if b < 0 else (top if b > top else b)]
                    if tg is not None:
                        self._targets = tg
                        self._stale = False
                        exact = True
        if self._stale:
            self._stale_targets()
        d = Decision()
        p1 = pol.times.plan(1)
        # Mandatory stages that can no longer finish even alone are dropped.
        mand, limit = self._mand, now + p1
        while mand:
            dl, tid = mand[0]
            t = tasks.get(tid)
            if t is None or t.stages_done:
                heapq.heappop(mand)
                self._latest = None
            elif dl < limit:
                heapq.heappop(mand)
                self._latest = None
                d.drop.append((tid, INFEASIBLE))
            else:
                break
        # _front, inlined: the earliest-deadline pending task (gone ones are popped).
        heap, front = self._all, None
        while heap:
            front = tasks.get(heap[0][1])
            if front is not None:
                break
            heapq.heappop(heap)
        ok = None
        if front is None or front.stages_done == 0:
            st.mandatory += 1
        if front is None:
            pass
        elif front.stages_done == 0:
            # The DP runs the earliest-deadline task's mandatory stage whatever its plan.
            d.run = [front.task_id]
            if self._batch:
                d.run += self._mandatory_mates(now, p1, front, tasks)
        elif (exact or self.follow_stale or not self._fresh_news()) and \
                self._targets is not None and \
                (ok := self._follow(now, self._targets, front, tasks, d)):
            if exact:
                st.exact += 1
            else:
                st.stale += 1
        else:
            if ok is False:
                st.guard_failed += 1     # the plan stays: its guards are checked anew
            st.fallback += 1
            d.run = []
            self._fallback(now, self._front(tasks), tasks, d, ok is None)
        pol.note_outcome(now, d)
        return d

    def boundary_time(self, seconds: float) -> None:
        """
        Tell the policy what one boundary cost the worker (lookup, guards, posting).

        Plans leave room for it at every stage (``StageTimes.set_overhead``). The caller
        times the boundary as a whole (the executor by its clock, the simulator by the
        thread's CPU time), so ``decide`` itself reads no clock.
        """
        self.policy._note_decision_time(seconds)

    def _fresh_news(self) -> int:
        """Fold the frames the adopted plan did not see into the reserve terms; count them."""
        if not self._new_dirty:
            return self._new_n
        self._new_dirty = False
        arr = self._arrivals
        seq = self._plan.seq if self._plan is not None else 0
        while arr and arr[0][0] < seq:
            arr.popleft()
        self._new_n, self._new_min, self._new_last = 0, INF, -INF
        self._new_sorted, self._new_term = True, INF
        if arr:
            p1 = self.policy.times.plan(1)
            for _, dl in arr:
                self._note_new(dl, p1)
        return self._new_n

    def _stale_targets(self) -> None:
        """Targets of the adopted plan: its newest entry whose exit has run."""
        self._stale = False
        for (tid, done), e in self._plan.entries.items():
            if tid < 0:
                self._targets = e.rows[0]
                continue
            conf = self._confs.get((tid, done))
            if conf is not None:
                tg = e.row(conf)
                if tg is not None:
                    self._targets = tg

    def _front(self, tasks: Mapping[int, Task]) -> Optional[Task]:
        """Return the earliest-deadline pending task (gone ones are popped)."""
        heap = self._all
        while heap:
            t = tasks.get(heap[0][1])
            if t is not None:
                return t
            heapq.heappop(heap)
        return None

    def _mandatory_mates(self, now: float, p1: float, first: Task,
                         tasks: Mapping[int, Task]) -> List[int]:
        """Other mandatory stages batched with ``first`` (as the lazy DP batches them)."""
        pol = self.policy
        cands = []
        for dl, tid in _smallest(self._mand, pol.max_batch):
            t = tasks.get(tid)
            if t is not None and t is not first and not t.stages_done:
                cands.append(t)
        if not cands:
            return []
        # Slack of the mandatory stages back to back from now (those considered).
        clock, slack = now, INF
        for t in [first] + cands:
            clock += p1
            slack = min(slack, t.deadline - clock)
        alone = pol.times.plan(1, 1)
        while cands:
            b = len(cands) + 1
            batched = pol.times.plan(1, b)
            if batched < alone * b and batched - alone <= slack:
                return [t.task_id for t in cands]
            cands.pop()
        return []

    def _follow(self, now: float, tg: Targets, front: Task, tasks: Mapping[int, Task],
                d: Decision) -> Optional[bool]:
        """
        Follow the plan for the front task.

        Deeper if planned and every mandatory stage still to run fits behind that stage;
        published if the plan stops it there.

        The mandatory stages are those the plan knew (``tg.reserve``: their latest start
        back to back) and every frame that arrived since its snapshot, appended to them
        (a conservative reserve, kept in O(1) by ``arrived``). A fresh plan passes this
        guard by construction (the DP reserved them); a stale one is followed while it
        holds. Returns False when a guard fails, None when the plan does not cover
        the front.
        """
        times = self.policy.times
        want = tg.want
        while front is not None:
            w = want.get(front.task_id)
            if w is None:
                return None
            k = front.stages_done
            if w > k and k < front.num_stages:
                break
            d.finish.append(front.task_id)          # the plan stops it here
            heapq.heappop(self._all)
            front = self._front(tasks)
            if front is not None and front.stages_done == 0:
                d.run = [front.task_id]             # the next one's mandatory stage
                return True
        if front is None:
            return True
        reserve = tg.reserve if not (self._new_dirty or self._new_n) else self._reserve(tg)
        stage = front.stages_done + 1
        end = now + times.plan(stage)
        if end > front.deadline + EPS or end > reserve + EPS:
            return False
        d.run = [front.task_id]
        d.planned_depth = want
        if self._batch:
            runnable = [front] + [t for t in (tasks.get(i) for i in tg.order)
                                  if t is not None and t is not front and
                                  want[t.task_id] > t.stages_done]
            d.run += self._mates(front, runnable, min(reserve, front.deadline) - end)
        return True

    def _reserve(self, tg: Targets) -> float:
        """
        Return when the mandatory stages must start at the latest (O(1), conservative).

        Those of the plan and those of the frames that arrived since its snapshot, back
        to back.

        New frames whose deadlines all come after the plan's last mandatory one are
        appended behind it (the usual case: a camera's newest frame has its latest
        deadline); otherwise each one is counted ahead of every planned one.
        """
        n = self._fresh_news() if self._new_dirty else self._new_n
        if not n:
            return tg.reserve
        p1 = self.policy.times.plan(1)
        if self._new_sorted and self._new_min >= tg.last:
            return min(tg.reserve, self._new_term - p1 * tg.block)
        return min(tg.reserve, self._new_min - p1 * tg.block) - p1 * n

    def _mates(self, first: Task, runnable: List[Task], slack: float) -> List[int]:
        """Batch mates as ``ImpreciseDP._batch_mates`` chooses them (same stage, fits)."""
        pol = self.policy
        stage = first.stages_done + 1
        mates = [t for t in runnable[1:] if t.stages_done + 1 == stage][:pol.max_batch - 1]
        if not mates:
            return []
        alone = pol.times.plan(stage, 1)
        while mates:
            b = len(mates) + 1
            batched = pol.times.plan(stage, b)
            if batched < alone * b and batched - alone <= slack:
                return [t.task_id for t in mates]
            mates.pop()
        return []

    def _first_mandatory(self, tasks: Mapping[int, Task]) -> Optional[Task]:
        """Return the earliest-deadline task whose mandatory stage has not run (or None)."""
        mand = self._mand
        while mand:
            t = tasks.get(mand[0][1])
            if t is not None and not t.stages_done:
                return t
            heapq.heappop(mand)
            self._latest = None
        return None

    def _fallback(self, now: float, front: Optional[Task], tasks: Mapping[int, Task],
                  d: Decision, uncovered: bool = True) -> None:
        """
        Take the cheap safe action when no plan covers the front (or a guard failed).

        For a front no plan covers, the DP's most recent decision for a front task at the
        same exit and confidence bin (the plans' ``table``) says whether it goes deeper;
        it does if that is so and its next stage leaves room for every mandatory stage
        waiting (counted back to back from the earliest deadline), else it is published
        now. Otherwise the earliest-deadline mandatory stage runs (the front keeps its
        result), and with none waiting the front goes one stage deeper if that fits its
        deadline. The planner replans from the next stage's start.
        """
        plan = self.policy.times.plan
        while uncovered and front is not None and front.stages_done >= 1:
            k = front.stages_done
            cell = self._table.get(k)
            deeper = None
            if cell is not None:
                deeper = cell[1].get(_bin(cell[0], front.last_confidence))
            if deeper is None:
                break
            end = now + plan(k + 1) if not front.complete else INF
            if deeper and end <= front.deadline and end <= self._mandatory_latest(tasks):
                d.run = [front.task_id]
                return
            if deeper and end <= front.deadline:
                break                      # mandatory stages first; the front waits
            d.finish.append(front.task_id)   # the DP would publish it here
            heapq.heappop(self._all)
            front = self._front(tasks)
            if front is not None and front.stages_done == 0:
                d.run = [front.task_id]
                return
        t = self._first_mandatory(tasks)
        if t is not None:
            d.run = [t.task_id]
            if self._batch:
                d.run += self._mandatory_mates(now, self.policy.times.plan(1), t, tasks)
            return
        while front is not None:
            if not front.complete and now + plan(front.stages_done + 1) <= front.deadline:
                d.run = [front.task_id]
                return
            d.finish.append(front.task_id)
            heapq.heappop(self._all)
            front = self._front(tasks)

    def _mandatory_latest(self, tasks: Mapping[int, Task], scan: int = 8) -> float:
        """
        Latest start of the waiting mandatory stages back to back (the first ``scan``).

        Cached until a frame arrives, a mandatory stage ends or the heap's head changes
        (a task whose mandatory stage ran meanwhile only makes the cached value
        conservative).
        """
        if self._latest is not None:
            return self._latest
        p1 = self.policy.times.plan(1)
        latest, need = INF, 0.0
        for dl, tid in _smallest(self._mand, scan):
            t = tasks.get(tid)
            if t is not None and not t.stages_done:
                need += p1
                latest = min(latest, dl - need)
        self._latest = latest
        return latest

    # -- planner side -----------------------------------------------------------------------
    def wait_for_stage(self, timeout: float) -> Optional[int]:
        """Block until a stage start newer than the last one planned; return its number."""
        self._waiting = True
        wake = self._wake
        if self._seq <= self._planned_seq:
            try:
                wake.get(timeout=timeout)
            except queue.Empty:
                pass
        while True:      # wake-ups of older stage starts: the newest is planned
            try:
                wake.get_nowait()
            except queue.Empty:
                break
        return self._seq if self._seq > self._planned_seq else None

    def plan(self, seq: int, publish: bool = True) -> Optional[ContingentPlan]:
        """
        Replay events up to stage start ``seq``, prepare a plan and hand it over.

        ``publish=False`` only returns it (the simulator hands it over at the simulated
        time the planner would have finished it).
        """
        # The planner thread's time from here: the replay is its work too.
        t0 = self.clock()
        start = None
        mirror = self._mirror
        while self._events:
            ev = self._events.popleft()
            kind = ev[0]
            if kind == 'a':
                # The planner's own copy, made here from the fields a task never changes
                # and its progress as posted.
                mirror.add(ev[1], ev[2], ev[3])
            elif kind == 's':
                mirror.stage_done(ev[1], ev[2], ev[3])
            elif kind == 'r':
                mirror.remove(ev[1])
            elif ev[1] == seq:
                start = ev
                break
        if start is None:
            return None
        self._planned_seq = seq
        _, _, now, run, stage = start
        if self.arrays:
            plan = prepare_arrays(self.policy, now, mirror, run, stage, seq=seq)
        else:
            plan = self.policy.prepare(now, mirror.tasks(), run, stage, seq=seq)
        # The newest DP decision per (exit, bin), merged here, off the worker's path. A
        # merged table is never changed once handed over: a change goes to a copy (made
        # only when some decision differs; usually none does).
        table = self._ptable
        copied = None         # exits whose cells this merge copied already (copy once)
        for k, edges, b, deeper in plan.table:
            cell = table.get(k)
            if cell is not None and cell[0] is edges and cell[1].get(b) == deeper:
                continue
            if copied is None:
                table, copied = dict(table), set()
            if cell is None or cell[0] is not edges:
                cells = {}
                table[k] = (edges, cells)
                copied.add(k)
            elif k not in copied:
                cells = dict(cell[1])
                table[k] = (edges, cells)
                copied.add(k)
            else:
                cells = cell[1]
            cells[b] = deeper
        self._ptable = plan.merged = table
        plan.planner_s = self.clock() - t0
        if publish:
            self.ready = plan
        return plan
