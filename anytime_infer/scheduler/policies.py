"""Scheduling policies behind one interface, chosen by name.

A policy answers, at time ``now`` for the pending tasks: which tasks' next stage runs now,
which tasks are finished (publish now at their depth) and which are dropped (with a
reason). ``anytime`` policies also have results published at a task's deadline from its
deepest completed exit; the plain-detector baselines publish only at their fixed depth.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np

from anytime_infer.scheduler.dp import solve, TaskOptions
from anytime_infer.scheduler.profile import ModelProfile
from anytime_infer.scheduler.task import Decision, INFEASIBLE, QUEUE_FULL, Task
from anytime_infer.scheduler.timing import StageTimes
from anytime_infer.scheduler.utility import OracleUtility, Utility

POLICY_NAMES = ('imprecise_dp', 'imprecise_dp_flat', 'fifo_full', 'latest_full', 'edf_full',
                'mandatory_only', 'fixed_depth', 'greedy', 'oracle')


class Policy:
    """Base class: ``decide(now, tasks)`` returns a Decision."""

    name = 'policy'
    anytime = False          # results are published at the deadline from the deepest exit
    simulation_only = False

    def __init__(self, profile: ModelProfile, times: Optional[StageTimes] = None) -> None:
        self.profile = profile
        self.n = profile.num_stages
        self.times = times or StageTimes(profile)

    def decide(self, now: float, tasks: Sequence[Task]) -> Decision:
        """What to do now with the pending tasks."""
        raise NotImplementedError

    def expected_accuracy(self, task: Task) -> float:
        """Expected accuracy of the task's current result (for the published message)."""
        if task.stages_done == 0:
            return 0.0
        conf = task.last_confidence
        acc = self.profile.exit_accuracy[task.stages_done - 1]
        return float(conf) if conf is not None and np.isfinite(conf) else acc


def _edf(tasks: Sequence[Task]) -> List[Task]:
    return sorted(tasks, key=lambda t: (t.deadline, t.arrival, t.task_id))


class FixedDepth(Policy):
    """Run every task to a fixed depth in EDF order; shed a task that cannot reach it.

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
    """The paper's policy: EDF order, depths chosen by a DP over quantised reward.

    Beyond the paper: tasks whose mandatory stage can no longer finish are dropped at once
    (``infeasible``); plans use a high percentile of stage time; slack left after the DP is
    spent on deeper stages (with slack, prefer depth); the same stage of several tasks may
    be batched when calibration says batching is cheaper; only the ``horizon`` earliest
    deadlines are planned exactly (a queue of thousands stays bounded in time).
    """

    name = 'imprecise_dp'
    anytime = True

    def __init__(self, profile: ModelProfile, times: Optional[StageTimes] = None,
                 flat: bool = False, quantum: float = 0.01, horizon: int = 32,
                 batching: bool = False, max_batch: int = 8, utility=None) -> None:
        super().__init__(profile, times)
        self.utility = utility or Utility(profile, flat=flat)
        self.quantum = quantum
        self.horizon = horizon
        self.batching = batching
        self.max_batch = max_batch
        if flat:
            self.name = 'imprecise_dp_flat'

    # -- planning -------------------------------------------------------------------------
    def _options(self, t: Task, u: np.ndarray) -> TaskOptions:
        lo = max(t.stages_done, 1)
        depths = list(range(lo, self.n + 1))
        times, acc = [], 0.0
        for depth in depths:
            if depth > t.stages_done:
                acc += self.times.plan(depth)
            times.append(acc)
        rewards = [t.weight * u[depth] for depth in depths]
        return TaskOptions(depths, rewards, times, t.deadline)

    def plan(self, now: float, tasks: Sequence[Task]):
        """Return (planned depth per task id, dropped (id, reason), deferred ids)."""
        drops, live = [], []
        p1 = self.times.plan(1)
        for t in tasks:
            if t.stages_done == 0 and now + p1 > t.deadline:
                drops.append((t.task_id, INFEASIBLE))
            else:
                live.append(t)
        live = _edf(live)
        planned = live[:self.horizon]
        # Mandatory stages that do not fit together are deferred (not planned now; they
        # are dropped as infeasible when they no longer fit alone).
        clock, chosen, deferred = now, [], []
        for t in planned:
            need = p1 if t.stages_done == 0 else 0.0
            if need and clock + need > t.deadline:
                deferred.append(t.task_id)
                continue
            clock += need
            chosen.append(t)
        opts = [self._options(t, self.utility.expected(t)) for t in chosen]
        picked = solve(now, opts, self.quantum)
        depth = {t.task_id: o.depths[i] for t, o, i in zip(chosen, opts, picked)}
        self._fill_slack(now, chosen, opts, picked, depth)
        for t in live[self.horizon:]:
            depth[t.task_id] = max(t.stages_done, 1)
        return depth, drops, deferred

    def _fill_slack(self, now: float, chosen: List[Task], opts: List[TaskOptions],
                    picked: List[int], depth: Dict[int, int]) -> None:
        """Deepen tasks while every deadline still holds, best expected gain first."""
        n = len(chosen)
        if n == 0:
            return
        work = np.array([o.times[i] for o, i in zip(opts, picked)])
        deadlines = np.array([t.deadline for t in chosen])
        has_work = work > 0
        while True:
            finish = now + np.cumsum(work)
            slack = np.where(has_work, deadlines - finish, np.inf)
            suffix = np.minimum.accumulate(slack[::-1])[::-1]
            best, best_gain = None, 0.0
            for j in range(n):
                o, i = opts[j], picked[j]
                if i + 1 >= len(o.depths):
                    continue
                extra = o.times[i + 1] - o.times[i]
                gain = o.rewards[i + 1] - o.rewards[i]
                own_slack = deadlines[j] - (finish[j] + extra)
                later = suffix[j + 1] if j + 1 < n else np.inf
                if gain >= 0 and own_slack >= 0 and later >= extra and \
                        (best is None or gain > best_gain):
                    best, best_gain = j, gain
            if best is None:
                return
            o = opts[best]
            picked[best] += 1
            work[best] = o.times[picked[best]]
            has_work[best] = True
            depth[chosen[best].task_id] = o.depths[picked[best]]

    def decide(self, now: float, tasks: Sequence[Task]) -> Decision:
        """Plan, publish tasks at their planned depth, run the next planned stage (EDF)."""
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
        return d

    def _batch_mates(self, now: float, first: Task, runnable: List[Task]) -> List[int]:
        """Other tasks at the same stage to run with ``first``, if batching saves time."""
        stage = first.stages_done + 1
        mates = [t for t in _edf(runnable) if t is not first and t.stages_done + 1 == stage]
        mates = mates[:self.max_batch - 1]
        while mates:
            b = len(mates) + 1
            batched = self.times.plan(stage, b)
            alone = self.times.plan(stage, 1)
            # Worth it when the batch costs less than running the stages one by one, and
            # the first task's stage still ends in time.
            if batched < alone * b * 0.9 and now + batched <= first.deadline:
                return [t.task_id for t in mates]
            mates.pop()
        return []


class Greedy(ImpreciseDP):
    """Expected accuracy gain per unit of time, highest first (no look-ahead)."""

    name = 'greedy'

    def __init__(self, profile: ModelProfile, times: Optional[StageTimes] = None) -> None:
        super().__init__(profile, times)

    def decide(self, now: float, tasks: Sequence[Task]) -> Decision:
        """Run the feasible next stage with the best gain per second; finish the rest."""
        d = Decision()
        p1 = self.times.plan(1)
        live = []
        for t in tasks:
            if t.stages_done == 0 and now + p1 > t.deadline:
                d.drop.append((t.task_id, INFEASIBLE))
            else:
                live.append(t)
        live = _edf(live)
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


def make_policy(name: str, profile: ModelProfile, depth: Optional[int] = None,
                times: Optional[StageTimes] = None, batching: bool = False) -> Policy:
    """Construct a policy by name (see POLICY_NAMES)."""
    if name == 'imprecise_dp':
        return ImpreciseDP(profile, times, batching=batching)
    if name == 'imprecise_dp_flat':
        return ImpreciseDP(profile, times, flat=True, batching=batching)
    if name == 'oracle':
        p = ImpreciseDP(profile, times, utility=OracleUtility(profile.num_stages),
                        batching=batching)
        p.name, p.simulation_only = 'oracle', True
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
