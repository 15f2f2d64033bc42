"""The compiled DP (``dpkernel``) against enumeration and the numpy suffix tables."""
from anytime_infer.scheduler import dp
from anytime_infer.scheduler.dpkernel import pack, plan_window
import numpy as np
import pytest

INF = float('inf')


def _instance(rng, n, levels=4):
    """Random tasks in EDF order, each feasible alone at time 0."""
    tasks, deadline = [], 0.0
    for _ in range(n):
        done = int(rng.integers(0, 3))
        depths = list(range(max(done, 1), levels + 1))
        times, acc = [], 0.0
        for d in depths:
            if d > done:
                acc += float(rng.uniform(0.5, 1.5))
            times.append(acc)
        rewards = rng.uniform(0.3, 1.0, len(depths))
        if rng.random() < 0.7:
            rewards = np.sort(rewards)
        deadline += float(rng.uniform(0.5, 3.0))
        deadline = max(deadline, times[0])
        tasks.append(dp.TaskOptions(depths, rewards.tolist(), times, deadline))
    return tasks


def _plan(tasks, now=0.0, reserve=INF, rows=None, deepen=False):
    f = tasks[0]
    rows = np.array([f.rewards] if rows is None else rows, dtype=float)
    return plan_window(now, reserve, 0.01, f.deadline, np.array(f.times, dtype=float), rows,
                       *pack(tasks[1:], 4), 0.0 if deepen else INF)


@pytest.mark.parametrize('seed', range(6))
def test_the_kernels_plan_is_optimal_and_feasible(seed):
    rng = np.random.default_rng(seed)
    checked = 0
    for _ in range(150):
        tasks = _instance(rng, int(rng.integers(1, 6)))
        best = dp.brute_force(0.0, tasks)
        if best < 0:
            continue
        picked = _plan(tasks)[0][0].tolist()
        assert dp.is_feasible(0.0, tasks, picked)
        assert dp.total_reward(tasks, picked) == best
        checked += 1
    assert checked > 100


def test_the_kernels_tables_are_the_numpy_tables():
    rng = np.random.default_rng(7)
    for _ in range(50):
        tasks = _instance(rng, 5)
        if dp.brute_force(0.0, tasks) < 0:
            continue
        rows = dp.build_rows(tasks[1:], 0.01)
        o, tail = dp.choose_front(0.0, tasks[0], rows, 0.01)
        picked = _plan(tasks)[0][0].tolist()
        fast = [int(np.argmax(t.rewards)) for t in tasks]
        # Where every task at its best depth fits, both are that plan (the fast path).
        assert picked == [o] + tail or (picked == fast and dp.is_feasible(0.0, tasks, fast))


def test_every_row_of_front_rewards_is_planned_as_if_alone():
    rng = np.random.default_rng(3)
    tasks = _instance(rng, 6)
    rows = rng.uniform(0.2, 1.0, (9, len(tasks[0].rewards)))
    together = _plan(tasks, rows=rows, deepen=True)[0]
    for b in range(len(rows)):
        alone = _plan(tasks, rows=rows[b:b + 1], deepen=True)[0][0]
        assert together[b].tolist() == alone.tolist()


def test_deepening_uses_slack_and_never_breaks_a_deadline():
    # One task alone with a far deadline and flat rewards: the DP may stop at depth 1; the
    # slack pass takes it to full depth (with slack, prefer depth).
    t = dp.TaskOptions([1, 2, 3, 4], [0.5, 0.5, 0.5, 0.5], [1.0, 2.0, 3.0, 4.0], 10.0)
    assert _plan([t], deepen=True)[0][0].tolist() == [3]
    tight = dp.TaskOptions([1, 2, 3, 4], [0.5, 0.5, 0.5, 0.5], [1.0, 2.0, 3.0, 4.0], 2.5)
    assert _plan([tight], deepen=True)[0][0].tolist() == [1]
    rng = np.random.default_rng(11)
    for _ in range(200):
        tasks = _instance(rng, int(rng.integers(1, 6)))
        if dp.brute_force(0.0, tasks) < 0:
            continue
        picked = _plan(tasks, deepen=True)[0]
        assert dp.is_feasible(0.0, tasks, picked[0].tolist())
        assert all(p >= q for p, q in zip(picked[0], _plan(tasks)[0][0]))   # only deeper


def test_deepening_runs_only_where_the_plan_leaves_the_slack_asked():
    # Depth 1 alone leaves 9 s of slack (deadline 10 s, 1 s of work).
    t = dp.TaskOptions([1, 2, 3, 4], [0.5, 0.5, 0.5, 0.5], [1.0, 2.0, 3.0, 4.0], 10.0)

    def plan(deepen_slack):
        return plan_window(0.0, INF, 0.01, t.deadline, np.array(t.times), np.array([t.rewards]),
                           *pack([], 4), deepen_slack)
    assert plan(8.9)[0][0].tolist() == [3]        # slack 9 >= 8.9: deepened
    picked, slack, _ = plan(9.1)                  # asks more than there is: the DP's own
    assert picked[0].tolist() == [0] and slack[0] == pytest.approx(9.0)
    assert plan(INF)[0][0].tolist() == [0]


def test_no_kernel_is_compiled_inside_a_decision_or_a_plan():
    # A kernel compiled at first use would stall that decision or plan for seconds (the
    # simulator would charge it; the node would miss deadlines): every kernel is compiled
    # at import with the types the scheduler passes, and use adds no specialisation.
    from anytime_infer.scheduler import dpkernel
    from anytime_infer.scheduler.planner import Mirror, prepare_arrays
    from anytime_infer.scheduler.policies import ImpreciseDP
    from anytime_infer.scheduler.timing import StageTimes
    from anytime_infer.scheduler.task import Task
    from sched_helpers import synthetic_profile
    compiled = {k: list(k.signatures) for k in (dpkernel.plan_window, dpkernel.prepare_plan)}
    assert all(compiled.values())                    # compiled at import
    prof = synthetic_profile()
    tasks = [Task(i, 0, 0.0, 0.002 * (i + 1), 4) for i in range(5)]
    tasks[0].stages_done, tasks[0].confidences = 1, [0.7]
    pol = ImpreciseDP(prof, StageTimes(prof), lazy=False)
    pol.decide(0.0, tasks)
    mirror = Mirror()
    for t in tasks:
        mirror.add(t, t.stages_done, t.confidences)
    prepare_arrays(pol, 0.0, mirror, [0], 2)
    prepare_arrays(pol, 0.0, mirror, [], 0)
    for kernel, before in compiled.items():
        assert kernel.signatures == before, 'compiled at first use'
