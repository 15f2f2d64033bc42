"""The dynamic program of Yao et al. (RTCSA 2020) over tasks in deadline order.

Given tasks 1..n in EDF order, each with options (depth, reward, remaining time), find one
option per task maximising total reward such that, running the tasks one after another in
that order, every task that still has work finishes by its deadline.

Rewards are quantised to integer multiples of ``quantum`` (default 0.01 expected-accuracy
points x weight). Table: for tasks 1..i and total quantised extra reward r, the minimum
finish time T_i[r] and the option achieving it; an option whose finish time exceeds the
task's deadline is discarded. The best r with a finite T_n[r] wins; depths come from
backtracking. Options with no remaining work (stop now) finish at once and carry no
deadline constraint.

Complexity: O(n * m * R) time and O(n * R) memory, with m options per task (<= L + 1)
and R = sum over tasks of their reward span / quantum; vectorised over r with numpy, so
the Python-level work is O(n).
"""
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

INF = float('inf')


@dataclass
class TaskOptions:
    """The choices for one task: parallel lists of depths, rewards and remaining times."""

    depths: Sequence[int]
    rewards: Sequence[float]
    times: Sequence[float]        # remaining time (s) to reach each depth
    deadline: float


def solve(now: float, tasks: List[TaskOptions], quantum: float = 0.01) -> List[int]:
    """Return the chosen option index of every task (same order as ``tasks``).

    Every task must have at least one option that is feasible on its own at ``now``;
    the caller sheds the others first. Options are tried in the given order, and on a tie
    (same quantised reward, same finish time) the earlier option is kept.
    """
    n = len(tasks)
    if n == 0:
        return []
    # Integer extra reward above each task's smallest option, so R stays small.
    q_rewards = []
    for t in tasks:
        r = np.rint(np.asarray(t.rewards, dtype=float) / quantum).astype(np.int64)
        q_rewards.append(r - r.min())
    size = 1
    finish = np.full(1, now)
    choices = []
    for t, qr in zip(tasks, q_rewards):
        span = int(qr.max())
        new_size = size + span
        padded = np.full(new_size + span, INF)
        padded[span:span + size] = finish
        times = np.asarray(t.times, dtype=float)
        # cand[o, r] = finish[r - qr[o]] + times[o]
        idx = (span - qr)[:, None] + np.arange(new_size)[None, :]
        cand = padded[idx] + times[:, None]
        late = (cand > t.deadline) & (times[:, None] > 0)
        cand[late] = INF
        best = np.argmin(cand, axis=0)
        finish = cand[best, np.arange(new_size)]
        choices.append(best)
        size = new_size
    feasible = np.flatnonzero(np.isfinite(finish))
    if feasible.size == 0:
        raise ValueError('no feasible assignment: shed infeasible tasks before planning')
    r = int(feasible[-1])
    picked = [0] * n
    for i in range(n - 1, -1, -1):
        o = int(choices[i][r])
        picked[i] = o
        r -= int(q_rewards[i][o])
    return picked


def brute_force(now: float, tasks: List[TaskOptions], quantum: float = 0.01) -> int:
    """Best total quantised extra reward by enumeration (for tests on small instances)."""
    import itertools
    q_rewards = [np.rint(np.asarray(t.rewards) / quantum).astype(int) for t in tasks]
    q_rewards = [q - q.min() for q in q_rewards]
    best = -1
    for combo in itertools.product(*[range(len(t.depths)) for t in tasks]):
        clock, ok = now, True
        for t, o in zip(tasks, combo):
            clock += t.times[o]
            if t.times[o] > 0 and clock > t.deadline:
                ok = False
                break
        if ok:
            best = max(best, sum(int(q[o]) for q, o in zip(q_rewards, combo)))
    return best


def total_reward(tasks: List[TaskOptions], picked: List[int], quantum: float = 0.01) -> int:
    """Quantised extra reward of an assignment (same measure as ``brute_force``)."""
    total = 0
    for t, o in zip(tasks, picked):
        q = np.rint(np.asarray(t.rewards) / quantum).astype(int)
        total += int(q[o] - q.min())
    return total


def is_feasible(now: float, tasks: List[TaskOptions], picked: List[int]) -> bool:
    """Whether an assignment meets every deadline when run in the given order."""
    clock = now
    for t, o in zip(tasks, picked):
        clock += t.times[o]
        if t.times[o] > 0 and clock > t.deadline + 1e-12:
            return False
    return True
