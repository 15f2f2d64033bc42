"""
The DP of ``dp`` for one planning window, compiled (numba): every outcome of the front at once.

``dp`` keeps the suffix tables in numpy, one call per task and option: a few microseconds
of interpreter work per call, ~100 us per decision, about a stage of a small network on a
fast accelerator (issue 11). Here the same computation runs as one compiled call of a few
microseconds: the latest-start tables of the tasks after the front, then for each row of
front rewards (one per outcome of the front's running exit) the plan ``ImpreciseDP``
makes: every task at its best depth where that plan meets every deadline; else the exact
DP (front option maximising its reward level + the best level of the rest starting after
it, then the rest backtracked); then one pass in EDF order deepening within the slack.

Semantics are those of ``dp.suffix_row``/``choose_front``/``backtrack`` and
``ImpreciseDP._fast_full_depth``/``_fill_slack``, tie-breaks included (first maximum);
``test_scheduler`` checks the kernel against ``dp.brute_force`` and the numpy tables.

Options are padded arrays: task i has ``nopt[i]`` options (depths ``lo_i .. lo_i + nopt -
1``), ``times[i, o]`` the remaining time (s) to reach option o, ``rewards[i, o]`` its
reward.
"""
import math
from typing import Sequence, Tuple

from numba import njit
import numpy as np

EPS = 1e-9
INF = math.inf


@njit(cache=True)
def _levels(rewards: np.ndarray, nopt: np.ndarray, quantum: float) -> np.ndarray:
    """Integer reward levels above each task's smallest option (``dp.quantise``)."""
    n, m = rewards.shape
    q = np.zeros((n, m), dtype=np.int64)
    for i in range(n):
        lo = 1 << 60
        for o in range(nopt[i]):
            v = np.int64(np.rint(rewards[i, o] / quantum))
            q[i, o] = v
            if v < lo:
                lo = v
        for o in range(nopt[i]):
            q[i, o] -= lo
    return q


@njit(cache=True)
def _tables(deadlines: np.ndarray, times: np.ndarray, q: np.ndarray, nopt: np.ndarray,
            reserve: float):
    """
    Latest-start tables S_i[r] and choices for the suffix tasks (``dp.suffix_row``).

    Row i has ``size[i]`` entries; the base after the last task is ``[reserve]``.
    """
    n = len(deadlines)
    total = 1
    for i in range(n):
        span = 0
        for o in range(nopt[i]):
            if q[i, o] > span:
                span = q[i, o]
        total += span
    S = np.full((n + 1, total), -INF)
    C = np.zeros((n + 1, total), dtype=np.int64)
    size = np.zeros(n + 1, dtype=np.int64)
    S[n, 0] = reserve
    size[n] = 1
    for i in range(n - 1, -1, -1):
        span = 0
        for o in range(nopt[i]):
            if q[i, o] > span:
                span = q[i, o]
        sz = size[i + 1] + span
        size[i] = sz
        for r in range(sz):
            best = -INF
            arg = 0
            for o in range(nopt[i]):
                j = r - q[i, o]
                v = S[i + 1, j] if 0 <= j < size[i + 1] else -INF
                t = times[i, o]
                if t > 0 and deadlines[i] < v:
                    v = deadlines[i]
                v -= t
                if v > best:
                    best = v
                    arg = o
            S[i, r] = best
            C[i, r] = arg
    return S, C, size


@njit(cache=True)
def _best_level(S: np.ndarray, row: int, size: int, start: float) -> int:
    for r in range(size - 1, -1, -1):
        if S[row, r] >= start - EPS:
            return r
    return -1


@njit(cache=True)
def plan_window(start: float, reserve: float, quantum: float, f_deadline: float,
                f_times: np.ndarray, f_rewards: np.ndarray, deadlines: np.ndarray,
                times: np.ndarray, rewards: np.ndarray, nopt: np.ndarray,
                deepen: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Plan the window for every row of front rewards; return (picked, min slack, levels).

    ``picked[b]``: the option of the front (index 0) and of each task after it when the
    front's rewards are ``f_rewards[b]``; ``min_slack[b]``: the least slack left after the
    deepening pass (what batching may use); ``levels[o]``: the best reward level of the
    rest after front option o, -1 where no plan with it meets every deadline.
    ``deepen=False`` returns the DP's own plan.
    """
    n = len(deadlines)
    nb, m0 = f_rewards.shape
    q = _levels(rewards, nopt, quantum)
    S, C, size = _tables(deadlines, times, q, nopt, reserve)
    # The rest at its best-reward depths (first maximum), for the fast path.
    best = np.zeros(n, dtype=np.int64)
    for i in range(n):
        for o in range(1, nopt[i]):
            if rewards[i, o] > rewards[i, best[i]]:
                best[i] = o
    # Front options' best rest level (the outcome does not change it).
    level = np.full(m0, -1, dtype=np.int64)
    for o in range(m0):
        end = start + f_times[o]
        if f_times[o] > 0 and end > f_deadline + EPS:
            continue
        level[o] = _best_level(S, 0, size[0], end)
    picked = np.zeros((nb, n + 1), dtype=np.int64)
    slack_out = np.full(nb, INF)
    finish = np.zeros(n + 1)
    suffix = np.zeros(n + 2)
    for b in range(nb):
        fb = 0
        for o in range(1, m0):
            if f_rewards[b, o] > f_rewards[b, fb]:
                fb = o
        # Fast path: every task at its best depth meets every deadline and the reserve.
        clock = start + f_times[fb]
        ok = not (f_times[fb] > 0 and clock > f_deadline)
        i = 0
        while ok and i < n:
            t = times[i, best[i]]
            clock += t
            if t > 0 and clock > deadlines[i]:
                ok = False
            i += 1
        if ok and clock <= reserve:
            picked[b, 0] = fb
            for i in range(n):
                picked[b, i + 1] = best[i]
        else:
            lo = 1 << 60
            for o in range(m0):
                v = np.int64(np.rint(f_rewards[b, o] / quantum))
                if v < lo:
                    lo = v
            tot, arg, arg_r = -1, -1, -1
            for o in range(m0):
                if level[o] < 0:
                    continue
                v = np.int64(np.rint(f_rewards[b, o] / quantum)) - lo + level[o]
                if v > tot:
                    tot, arg, arg_r = v, o, level[o]
            if arg < 0:
                # No plan meets every deadline (stage times ran over the plan): everyone
                # at least depth; the tasks that no longer fit are shed at later decisions.
                for i in range(n + 1):
                    picked[b, i] = 0
            else:
                picked[b, 0] = arg
                r = arg_r
                for i in range(n):
                    o = C[i, r]
                    picked[b, i + 1] = o
                    r -= q[i, o]
        if not deepen:
            continue
        # Slack table (``_slack_table``) then one deepening pass (``_deepen``).
        clock = start
        for j in range(n + 1):
            clock += f_times[picked[b, 0]] if j == 0 else times[j - 1, picked[b, j]]
            finish[j] = clock
        suffix[n + 1] = reserve - finish[n]
        for j in range(n, -1, -1):
            if j == 0:
                own = f_deadline - finish[0] if f_times[picked[b, 0]] > 0 else INF
            else:
                own = deadlines[j - 1] - finish[j] if times[j - 1, picked[b, j]] > 0 else INF
            suffix[j] = own if own < suffix[j + 1] else suffix[j + 1]
        shift = 0.0
        for j in range(n + 1):
            k = picked[b, j]
            if j == 0:
                cnt, dl = m0, f_deadline
            else:
                cnt, dl = nopt[j - 1], deadlines[j - 1]
            if k + 1 >= cnt:
                continue
            room = min(suffix[j + 1], dl - finish[j]) - shift
            while k + 1 < cnt:
                if j == 0:
                    extra = f_times[k + 1] - f_times[k]
                    worse = f_rewards[b, k + 1] < f_rewards[b, k] - quantum
                else:
                    extra = times[j - 1, k + 1] - times[j - 1, k]
                    worse = rewards[j - 1, k + 1] < rewards[j - 1, k] - quantum
                if worse or extra > room:
                    break
                k += 1
                room -= extra
                shift += extra
            picked[b, j] = k
        slack_out[b] = suffix[0] - shift
    return picked, slack_out, level


def pack(opts: Sequence, width: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return padded arrays (deadlines, times, rewards, option counts) of ``dp.TaskOptions``."""
    n = len(opts)
    deadlines = np.empty(n)
    times = np.zeros((n, max(width, 1)))
    rewards = np.zeros((n, max(width, 1)))
    nopt = np.empty(n, dtype=np.int64)
    for i, o in enumerate(opts):
        k = len(o.times)
        deadlines[i] = o.deadline
        times[i, :k] = o.times
        rewards[i, :k] = o.rewards
        nopt[i] = k
    return deadlines, times, rewards, nopt


def warm_up() -> None:
    """Compile (or load from numba's cache) before the first real decision."""
    one = np.zeros((1, 2))
    plan_window(0.0, INF, 0.01, 1.0, np.array([0.0, 0.1]), one, np.array([1.0]),
                np.array([[0.1, 0.2]]), one, np.array([2], dtype=np.int64), True)


warm_up()
