"""
Scheduling policies behind one interface, chosen by name.

A policy answers, at time ``now`` for the pending tasks: which tasks' next stage runs now,
which tasks are finished (publish now at their depth) and which are dropped (with a
reason). ``anytime`` policies also have results published at a task's deadline from its
deepest completed exit; the plain-detector baselines publish only at their fixed depth.
"""
import math
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from anytime_infer.scheduler.dp import INF, TaskOptions
from anytime_infer.scheduler.dpkernel import inline_plan, pack, plan_window
from anytime_infer.scheduler.planner import ContingentPlan, prepare as prepare_plan
from anytime_infer.scheduler.profiles import ModelProfile
from anytime_infer.scheduler.task import Decision, INFEASIBLE, QUEUE_FULL, Task
from anytime_infer.scheduler.timing import plan_times, StageTimes
from anytime_infer.scheduler.utility import OracleUtility, Utility
import numpy as np

POLICY_NAMES = ('imprecise_dp', 'imprecise_dp_flat', 'fifo_full', 'latest_full', 'edf_full',
                'mandatory_only', 'fixed_depth', 'greedy', 'oracle')
# Online policies the oracle's bound includes (the static depths are dominated by these).
ORACLE_ALSO = ('imprecise_dp', 'imprecise_dp_flat', 'greedy')
# The DP spends the slack its plan leaves on deeper stages while the worker has run out of
# work (a decision with nothing to do) within the last DEEPEN_MEMORY full-depth times, and
# otherwise only where that slack exceeds DEEPEN_MEMORY full-depth times: under overload
# the slack that the window of known frames shows belongs to frames that have not arrived
# yet, while a burst of frames with long deadlines has slack no arrival will take.
DEEPEN_MEMORY = 20.0


class Policy:
    """Base class: ``decide(now, tasks)`` returns a Decision."""

    name = 'policy'
    anytime = False          # results are published at the deadline from the deepest exit
    simulation_only = False
    clock = staticmethod(time.perf_counter)   # times the policy's own work (the simulator
    #                                           may set the CPU-time clock)
    free_decisions = False   # decisions cost the worker nothing (the simulator's bound)

    def __init__(self, profile: ModelProfile, times: Optional[StageTimes] = None) -> None:
        self.profile = profile
        self.n = profile.num_stages
        self.times = times or StageTimes(profile)

    def decide(self, now: float, tasks: Sequence[Task]) -> Decision:
        """Decide what to do now with the pending tasks."""
        raise NotImplementedError

    def note_idle(self, now: float) -> None:
        """Hear that the worker has no pending task at ``now`` (it waits for frames)."""

    def expected_accuracy(self, task: Task) -> float:
        """Return the expected accuracy of the task's current result (for publishing)."""
        if task.stages_done == 0:
            return 0.0
        conf = task.last_confidence
        acc = self.profile.exit_accuracy[task.stages_done - 1]
        # math.isfinite: np.isfinite on a float cost ~5 us per published result.
        return float(conf) if conf is not None and math.isfinite(conf) else acc


def _edf(tasks: Sequence[Task]) -> List[Task]:
    return sorted(tasks, key=lambda t: (t.deadline, t.arrival, t.task_id))


class FixedDepth(Policy):
    """
    Run every task to a fixed depth in EDF order; shed a task that cannot reach it.

    ``mandatory_only`` is depth 1 and ``edf_full`` is full depth without shedding (the
    classic EDF that also runs late work).
    """

    name = 'fixed_depth'

    def __init__(self, profile: ModelProfile, depth: int, times: Optional[StageTimes] = None,
                 shed: bool = True) -> None:
        super().__init__(profile, times)
        if not 1 <= depth <= self.n:
            raise ValueError(f'depth must be within 1..{self.n}, not {depth}')
        self.depth = depth
        self.shed = shed

    def decide(self, now: float, tasks: Sequence[Task]) -> Decision:
        """EDF; run the earliest task's next stage; finish at the fixed depth."""
        d = Decision()
        best = None
        for t in tasks:
            if t.stages_done >= self.depth:
                d.finish.append(t.task_id)
                continue
            if self.shed and now + self.times.remaining(t.stages_done, self.depth) > t.deadline:
                d.drop.append((t.task_id, INFEASIBLE))
                continue
            if best is None or (t.deadline, t.arrival, t.task_id) < \
                    (best.deadline, best.arrival, best.task_id):
                best = t
        if best is not None:
            d.run = [best.task_id]
        return d


class FifoFull(Policy):
    """What a plain detector node does: full depth, arrival order, unbounded queue."""

    name = 'fifo_full'

    def decide(self, now: float, tasks: Sequence[Task]) -> Decision:
        """Run the oldest task to full depth; publish it then, late or not."""
        d = Decision()
        oldest = None
        for t in tasks:
            if t.complete:
                d.finish.append(t.task_id)
            elif oldest is None or (t.arrival, t.task_id) < (oldest.arrival, oldest.task_id):
                oldest = t
        if oldest is not None:
            d.run = [oldest.task_id]
        return d


class LatestFull(FifoFull):
    """A plain node with a depth-1 queue per camera: only the newest frame is kept."""

    name = 'latest_full'

    def decide(self, now: float, tasks: Sequence[Task]) -> Decision:
        """Drop superseded, not yet started frames; run the rest to full depth."""
        newest: Dict[int, Task] = {}
        for t in tasks:
            cur = newest.get(t.stream)
            if cur is None or t.arrival > cur.arrival:
                newest[t.stream] = t
        keep, drop = [], []
        for t in tasks:
            if t.stages_done == 0 and newest[t.stream] is not t:
                drop.append((t.task_id, QUEUE_FULL))
            else:
                keep.append(t)
        d = super().decide(now, keep)
        d.drop.extend(drop)
        return d


class ImpreciseDP(Policy):
    """
    The paper's policy: EDF order, depths chosen by a DP over quantised reward.

    Beyond the paper: tasks whose mandatory stage can no longer finish are dropped at once
    (``infeasible``); plans use a high percentile of stage time and start after the
    planner's own (measured) decision time; slack left after the DP is spent on deeper
    stages (with slack, prefer depth) while that slack is real (``DEEPEN_MEMORY``); the
    same stage of several tasks may be batched when calibration says batching is cheaper
    and every deadline still holds; only the
    ``horizon`` earliest deadlines are planned exactly (a queue of thousands stays bounded
    in time). The DP runs compiled (``dpkernel``: one call of a few microseconds per plan);
    ``dp`` is its numpy reference.
    """

    name = 'imprecise_dp'
    anytime = True
    contingent = True        # plans off the critical path (``prepare``; see planner.py)
    slots = True             # decides on slot arrays its caller keeps (``decide_slots``)
    chain = 1                # exits of the running task one contingent plan covers

    def __init__(self, profile: ModelProfile, times: Optional[StageTimes] = None,
                 flat: bool = False, quantum: float = 0.01, horizon: int = 6,
                 batching: bool = False, max_batch: int = 8, utility=None,
                 lazy: bool = True) -> None:
        super().__init__(profile, times)
        self.utility = utility or Utility(profile, flat=flat)
        # Decide through the compiled prelude and DP where the utility has arrays.
        self._arrays = type(self.utility) is Utility
        self.lazy = lazy
        self.quantum = quantum
        self.horizon = horizon
        self.batching = batching
        self.max_batch = max_batch
        self._opt_cache: Dict[tuple, TaskOptions] = {}
        self._decision_s = 0.0          # this policy's own time per decision (s)
        self._recent: List[float] = []
        self.min_slack = np.inf
        self.deepen_slack = 0.0         # deepen plans that leave this much slack (s)
        self._idle_at: Optional[float] = None     # when the worker last ran out of work
        self._deepen_s = DEEPEN_MEMORY * profile.full_depth_mean()
        if flat:
            self.name = 'imprecise_dp_flat'

    # -- planning -------------------------------------------------------------------------
    def _options(self, t: Task) -> TaskOptions:
        u = self.utility.expected(t)
        lo = max(t.stages_done, 1)
        depths = list(range(lo, self.n + 1))
        times, acc = [], 0.0
        for depth in depths:
            if depth > t.stages_done:
                acc += self.times.plan(depth)
            times.append(acc)
        rewards = [t.weight * u[depth] for depth in depths]
        return TaskOptions(depths, rewards, times, t.deadline)

    def _cached_options(self, keys: List[tuple], tasks: List[Task]) -> List[TaskOptions]:
        """Options of tasks, computed once per task state (``keys``) and cached."""
        cache = self._opt_cache
        out = []
        for k, t in zip(keys, tasks):
            o = cache.get(k)
            if o is None:
                o = cache[k] = self._options(t)
            out.append(o)
        return out

    def _key(self, t: Task) -> tuple:
        # The confidence is part of the state: the planner evaluates one task at several
        # hypothetical outcomes of its running exit.
        return (t.task_id, t.stages_done, t.deadline, t.weight, self.times.version,
                t.confidences[-1] if t.confidences else None)

    @staticmethod
    def _reserve(tasks: Sequence[Task], p1: float) -> float:
        """Latest start of the mandatory stages of ``tasks`` (EDF order), run back to back."""
        reserve, need = INF, 0.0
        for t in tasks:
            if t.stages_done == 0:
                need += p1
                reserve = min(reserve, t.deadline - need)
        return reserve

    def _window(self, rest_all: List[Task]) -> Tuple[List[Task], float]:
        """
        Tasks after the front that the DP plans exactly, and the reserve behind them.

        The window is the ``horizon`` - 1 earliest deadlines after the front; the mandatory
        stages of the tasks after it are reserved behind it (``reserve``: the latest time
        that block may start), so no plan starves them.
        """
        window = rest_all[:self.horizon - 1]
        reserve = self._reserve(rest_all[len(window):], self.times.plan(1))
        if window and reserve >= window[-1].deadline:
            reserve = INF    # nothing after the window can constrain it
        return window, reserve

    def _prelude(self, start: float, tasks: Sequence[Task]):
        """
        Shed and order: (dropped (id, reason), EDF tasks planned now, deferred ids).

        A task whose mandatory stage cannot finish by its deadline even alone is dropped;
        mandatory stages that do not fit together are deferred (not planned now; dropped
        as infeasible when they no longer fit alone).
        """
        drops, live = [], []
        p1 = self.times.plan(1)
        for t in tasks:
            if t.stages_done == 0 and start + p1 > t.deadline:
                drops.append((t.task_id, INFEASIBLE))
            else:
                live.append(t)
        live = _edf(live)
        clock, chosen, deferred = start, [], []
        mandatory_slack = INF
        for t in live:
            need = p1 if t.stages_done == 0 else 0.0
            if need and clock + need > t.deadline:
                deferred.append(t.task_id)
                continue
            clock += need
            if need:
                mandatory_slack = min(mandatory_slack, t.deadline - clock)
            chosen.append(t)
        return drops, chosen, deferred, mandatory_slack

    def plan(self, now: float, tasks: Sequence[Task]):
        """Return (planned depth per task id, dropped (id, reason), deferred ids)."""
        start = now + self._decision_s
        drops, chosen, deferred, mandatory_slack = self._prelude(start, tasks)
        depth: Dict[int, int] = {}
        if self.lazy and chosen and chosen[0].stages_done == 0:
            # Every plan runs the earliest-deadline task's mandatory stage next, whatever
            # depths it assigns: the DP is evaluated once a decision depends on it.
            for t in chosen:
                if t.stages_done == 0:
                    depth[t.task_id] = 1
            self.min_slack = mandatory_slack
            return depth, drops, deferred
        if chosen:
            depth = self.plan_depths(start, chosen)[0]
        # Tasks beyond the window get no depth now: they are neither run nor published
        # early; they are planned when they move into the window.
        return depth, drops, deferred

    def plan_depths(self, start: float, chosen: List[Task]):
        """
        Run the DP over the front task and its window (``chosen``: EDF, none shed).

        Every task at its best-reward depth if that plan meets every deadline (then it is
        the DP's optimum too), else the exact DP; then slack left is spent on deeper
        stages in EDF order (with slack, prefer depth). One compiled call
        (``dpkernel.plan_window``). Returns (depth per planned task id, window tasks after
        the front, the latest start of the mandatory block reserved behind the window).
        """
        front, rest_all = chosen[0], chosen[1:]
        rest, reserve = self._window(rest_all)
        chosen = [front] + rest
        keys = [self._key(t) for t in chosen]
        opts = self._cached_options(keys, chosen)
        # Keep only what is planned now (bounded memory).
        self._opt_cache = dict(zip(keys, opts))
        f = opts[0]
        picked, slack, _ = plan_window(start, reserve, self.quantum, f.deadline,
                                       np.asarray(f.times, dtype=float),
                                       np.asarray([f.rewards], dtype=float),
                                       *pack(opts[1:], self.n), self.deepen_slack)
        self.min_slack = float(slack[0])
        depth = {t.task_id: o.depths[i]
                 for t, o, i in zip(chosen, opts, picked[0].tolist())}
        return depth, rest, reserve

    def prepare(self, now: float, tasks: Sequence[Task], running: Sequence[int], stage: int,
                seq: int = 0) -> ContingentPlan:
        """
        Plan off the critical path: the DP for every outcome of the running stage.

        ``tasks`` as they were when the stage of ``running`` (at ``stage``) started at
        ``now``. See ``anytime_infer.scheduler.planner`` for the worker's side.
        """
        return prepare_plan(self, now, tasks, running, stage, seq)

    def decide(self, now: float, tasks: Sequence[Task]) -> Decision:
        """Plan, publish tasks at their planned depth, run the next planned stage (EDF)."""
        if self._arrays:
            return self._decide_arrays(now, tasks)
        return self._decide_py(now, tasks)

    def _decide_arrays(self, now: float, tasks: Sequence[Task]) -> Decision:
        """
        Decide as ``_decide_py``, the prelude and the DP in one compiled call (``inline_plan``).

        The same decision (a test compares them); what is left in Python is reading the
        tasks once (46 pending tasks: 37 us against 48 us, warm, this machine).
        """
        t0 = self.clock()
        tasks = list(tasks)
        nan = math.nan
        f = np.array(([t.deadline for t in tasks], [t.arrival for t in tasks],
                      [t.weight for t in tasks],
                      [t.confidences[-1] if t.confidences else nan for t in tasks],
                      [0.0] * len(tasks)))
        done = [t.stages_done for t in tasks]
        i = np.array(([t.task_id for t in tasks], done, [t.num_stages for t in tasks],
                      [0] * len(tasks), [1] * len(tasks)), dtype=np.int64)
        d = self._decide_on(now, f.reshape(5, len(tasks)), i.reshape(5, len(tasks)),
                            tasks.__getitem__)
        self._note_decision_time(self.clock() - t0)
        return d

    def decide_slots(self, now: float, f: np.ndarray, i: np.ndarray,
                     tasks: Mapping[int, Task]) -> Decision:
        """
        Decide as ``decide`` on slot arrays kept up to date by the caller (``InlineLink``).

        ``f``/``i`` in the layout of ``planner.Mirror`` (a slot whose ``i[4]`` is 0 is
        free); ``tasks``: the pending tasks by id, for what the decision returns. Saves
        reading every pending task at every decision.
        """
        t0 = self.clock()
        ids = i[0]
        d = self._decide_on(now, f, i, lambda s: tasks[int(ids[s])])
        self._note_decision_time(self.clock() - t0)
        return d

    def _decide_on(self, now: float, f: np.ndarray, i: np.ndarray,
                   task_of: Callable[[int], Task]) -> Decision:
        """Run ``inline_plan`` on the arrays; make the decision (slot s is ``task_of(s)``)."""
        u = self.utility
        mean, cond, edges, nbins = u.tables()
        dropped, lazy, chosen, order, depths, slack = inline_plan(
            now + self._decision_s, f, i, plan_times(self.times, self.n), self.quantum,
            self.horizon, self.lazy, u.flat, mean, cond, edges, nbins, self.deepen_slack)
        self.min_slack = float(slack)
        d = Decision()
        d.drop = [(task_of(s).task_id, INFEASIBLE) for s in dropped.tolist()]
        runnable: List[Task] = []
        if lazy:
            picked = [task_of(s) for s in chosen.tolist()]
            d.planned_depth = {t.task_id: 1 for t in picked if t.stages_done == 0}
            runnable = [t for t in picked if t.stages_done == 0]
        else:
            want = depths[0].tolist()
            picked = [task_of(s) for s in order.tolist()]
            d.planned_depth = {t.task_id: w for t, w in zip(picked, want)}
            for t, w in zip(picked, want):
                if t.stages_done >= 1 and (w <= t.stages_done or t.complete):
                    d.finish.append(t.task_id)
                elif w > t.stages_done:
                    runnable.append(t)
        if runnable:
            first = runnable[0]          # EDF order already
            d.run = [first.task_id]
            if self.batching:
                d.run += self._batch_mates(now, first, runnable, ordered=True)
        self.note_outcome(now, d)
        return d

    def _decide_py(self, now: float, tasks: Sequence[Task]) -> Decision:
        """Decide in Python (the reference; the oracle's utility has no arrays)."""
        t0 = self.clock()
        d = Decision()
        depth, d.drop, deferred = self.plan(now, tasks)
        d.planned_depth = depth
        runnable = []
        for t in tasks:
            want = depth.get(t.task_id)
            if want is None:
                continue
            if t.stages_done >= 1 and (want <= t.stages_done or t.complete):
                d.finish.append(t.task_id)
            elif want > t.stages_done:
                runnable.append(t)
        if runnable:
            first = min(runnable, key=lambda t: (t.deadline, t.arrival, t.task_id))
            d.run = [first.task_id]
            if self.batching:
                d.run += self._batch_mates(now, first, runnable)
        self.note_outcome(now, d)
        self._note_decision_time(self.clock() - t0)
        return d

    def note_outcome(self, now: float, d: Decision) -> None:
        """
        Record whether a decision left the worker without work; set ``deepen_slack``.

        Called with every decision (inline, or the planner's boundary). See
        ``DEEPEN_MEMORY``: always deepening gained 0.5-1 point at 1-1.5x load and lost
        about 1 point at 2-3x (fashion_mnist and a synthetic 3-exit trace, CPU times).
        """
        if self._idle_at is None or not (d.run or d.finish or d.drop):
            self.note_idle(now)
        elif now - self._idle_at > self._deepen_s:
            self.deepen_slack = self._deepen_s

    def note_idle(self, now: float) -> None:
        """Hear that the worker has no pending task (it ran out of work: deepen again)."""
        self._idle_at = now
        self.deepen_slack = 0.0

    def _note_decision_time(self, spent: float) -> None:
        """
        Keep the planner's own time per decision (median of the last 64) for planning.

        The median, not a tail: one preempted decision must not make every plan shallower
        (the stage-time percentile already covers the tails of the worker's time). Where
        decisions are free (the simulator's bound) nothing is planned for them, so the
        bound does not depend on how fast this machine was at that moment.
        """
        if self.free_decisions:
            return
        self._recent.append(spent)
        if len(self._recent) >= 64:
            self._decision_s = float(np.median(self._recent))
            self._recent.clear()
            self.times.set_overhead(self._decision_s)

    def _batch_mates(self, now: float, first: Task, runnable: List[Task],
                     ordered: bool = False) -> List[int]:
        """Other tasks at the same stage to run with ``first``, if batching saves time."""
        stage = first.stages_done + 1
        mates = [t for t in (runnable if ordered else _edf(runnable))
                 if t is not first and t.stages_done + 1 == stage]
        mates = mates[:self.max_batch - 1]
        alone = self.times.plan(stage, 1)
        while mates:
            b = len(mates) + 1
            batched = self.times.plan(stage, b)
            # Worth it when the batch is clearly cheaper than the stages one by one, and
            # the delay it adds before the first task's later stages fits every task's
            # slack.
            if batched < alone * b * 0.9 and batched - alone <= self.min_slack:
                return [t.task_id for t in mates]
            mates.pop()
        return []


class Greedy(ImpreciseDP):
    """Expected accuracy gain per unit of time, highest first (no look-ahead)."""

    name = 'greedy'
    contingent = False       # decides at the boundary (its whole decision is inline)
    slots = False            # its own decision reads the tasks (decide_slots is the DP's)

    def __init__(self, profile: ModelProfile, times: Optional[StageTimes] = None) -> None:
        super().__init__(profile, times)

    def decide(self, now: float, tasks: Sequence[Task]) -> Decision:
        """Run the feasible next stage with the best gain per second; finish the rest."""
        d = Decision()
        # The DP's prelude: infeasible mandatory stages dropped, the rest in EDF order,
        # and a mandatory stage that does not fit behind the earlier ones left waiting.
        # Checking each candidate against every queued mandatory stage instead ran
        # nothing while they could not all fit, until drops made room (traffic_lights at
        # CPU times, 3x: 0.04-0.70 against 0.90 at depth 1).
        d.drop, live, _, _ = self._prelude(now, tasks)
        mandatory = [t for t in live if t.stages_done == 0]
        best, best_score = None, 0.0
        for t in live:
            if t.complete:
                d.finish.append(t.task_id)
                continue
            stage = t.stages_done + 1
            cost = self.times.plan(stage)
            u = self.utility.expected(t)
            gain = t.weight * (u[stage] - u[t.stages_done])
            fits = now + cost <= t.deadline and self._mandatory_fit(now + cost, mandatory, t)
            if not fits or gain <= 0:
                if t.stages_done >= 1:
                    d.finish.append(t.task_id)
                continue
            score = gain / cost
            if best is None or score > best_score:
                best, best_score = t, score
        if best is not None:
            d.run = [best.task_id]
        return d

    def _mandatory_fit(self, start: float, mandatory: List[Task], running: Task) -> bool:
        clock = start
        p1 = self.times.plan(1)
        for t in mandatory:
            if t is running:
                continue
            clock += p1
            if clock > t.deadline:
                return False
        return True


def _fresh(name: str, profile: ModelProfile, times: Optional[StageTimes], batching: bool):
    """Return a factory of a policy with its own stage-time estimates (as ``times``)."""
    def make() -> Policy:
        own = None if times is None else StageTimes(
            profile, percentile=times.percentile, adapt=times.adapt,
            memory_s=getattr(times, 'memory_s', 1.0))
        return make_policy(name, profile, times=own, batching=batching)
    return make


def make_policy(name: str, profile: ModelProfile, depth: Optional[int] = None,
                times: Optional[StageTimes] = None, batching: bool = True) -> Policy:
    """
    Construct a policy by name (see POLICY_NAMES).

    ``batching`` (default on) lets the DP policies batch a stage of several tasks where
    the profile's calibrated batch latencies make that cheaper; the baselines never batch.
    """
    if name == 'imprecise_dp':
        return ImpreciseDP(profile, times, batching=batching)
    if name == 'imprecise_dp_flat':
        return ImpreciseDP(profile, times, flat=True, batching=batching)
    if name == 'oracle':
        p = ImpreciseDP(profile, times, utility=OracleUtility(profile.num_stages),
                        batching=batching)
        p.name, p.simulation_only = 'oracle', True
        # The clairvoyant DP still plans on stage-time percentiles over a receding window
        # without knowing future frames, so an online policy can beat it on a run: the
        # simulator reports the best of it and of these (same frames, same stage-time
        # draws), an upper bound of every policy the package has (see ``simulate``).
        p.best_of = [_fresh(n, profile, times, batching) for n in ORACLE_ALSO]
        return p
    if name == 'greedy':
        return Greedy(profile, times)
    if name == 'fifo_full':
        return FifoFull(profile, times)
    if name == 'latest_full':
        return LatestFull(profile, times)
    if name == 'edf_full':
        p = FixedDepth(profile, profile.num_stages, times, shed=False)
        p.name = 'edf_full'
        return p
    if name == 'mandatory_only':
        p = FixedDepth(profile, 1, times)
        p.name = 'mandatory_only'
        return p
    if name == 'fixed_depth':
        if depth is None:
            raise ValueError('fixed_depth needs a depth (--depth K)')
        p = FixedDepth(profile, depth, times)
        p.name = f'fixed_depth_{depth}'
        return p
    raise ValueError(f'unknown policy {name!r}; known: {", ".join(POLICY_NAMES)}')
