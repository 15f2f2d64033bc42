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
                deepen_slack: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Plan the window for every row of front rewards; return (picked, min slack, levels).

    ``picked[b]``: the option of the front (index 0) and of each task after it when the
    front's rewards are ``f_rewards[b]``; ``min_slack[b]``: the least slack left after the
    deepening pass (what batching may use); ``levels[o]``: the best reward level of the
    rest after front option o, -1 where no plan with it meets every deadline.
    The deepening pass runs on a row whose plan leaves at least ``deepen_slack`` seconds
    of slack (0: always; INF: never, the DP's own plan).
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
        if deepen_slack == INF:
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
        if suffix[0] < deepen_slack:
            slack_out[b] = suffix[0]
            continue
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


@njit(cache=True)
def _edf(idx: np.ndarray, deadline: np.ndarray, arrival: np.ndarray,
         tid: np.ndarray) -> None:
    """Sort slot indices in place by (deadline, arrival, task id) (insertion sort)."""
    for i in range(1, len(idx)):
        v = idx[i]
        j = i
        while j > 0:
            u = idx[j - 1]
            if deadline[u] > deadline[v] or (deadline[u] == deadline[v] and (
                    arrival[u] > arrival[v] or (arrival[u] == arrival[v] and tid[u] > tid[v]))):
                idx[j] = u
                j -= 1
            else:
                break
        idx[j] = v


@njit(cache=True)
def _utility(k: int, conf: float, flat: bool, mean: np.ndarray, cond: np.ndarray,
             edges: np.ndarray, nbins: np.ndarray, out: np.ndarray) -> None:
    """Write the expected accuracy per depth (``Utility.expected``) into ``out``."""
    n = len(mean)
    out[0] = 0.0
    if flat or k == 0 or not np.isfinite(conf):
        for d in range(1, n + 1):
            out[d] = mean[d - 1]
        return
    nb = nbins[k - 1]
    b = np.searchsorted(edges[k - 1, :nb + 1], conf, side='right') - 1
    b = min(max(b, 0), nb - 1)
    for d in range(1, n + 1):
        out[d] = cond[k - 1, b, d] if d >= k else mean[d - 1]


@njit(cache=True)
def _block(order: np.ndarray, lo: int, done: np.ndarray, deadline: np.ndarray,
           p1: float) -> Tuple[float, int, float]:
    """Latest start, count and last deadline of the mandatory stages of order[lo:]."""
    reserve, need, cnt, last = INF, 0.0, 0, -INF
    for j in range(lo, len(order)):
        s = order[j]
        if done[s] == 0:
            need += p1
            cnt += 1
            if deadline[s] - need < reserve:
                reserve = deadline[s] - need
            last = deadline[s]
    return reserve, cnt, last


@njit(cache=True)
def _prelude(start: float, alive: np.ndarray, done: np.ndarray, deadline: np.ndarray,
             arrival: np.ndarray, tid: np.ndarray, p1: float):
    """
    ``ImpreciseDP._prelude`` on slots: (dropped, chosen in EDF order, mandatory slack).

    A mandatory stage that cannot end by its deadline even alone is dropped; mandatory
    stages that do not fit together are deferred (neither dropped nor chosen).
    """
    dropped = np.empty(len(alive), dtype=np.int64)
    live = np.empty(len(alive), dtype=np.int64)
    nd, m = 0, 0
    for s in alive:
        if done[s] == 0 and start + p1 > deadline[s]:
            dropped[nd] = s
            nd += 1
        else:
            live[m] = s
            m += 1
    live = live[:m]
    _edf(live, deadline, arrival, tid)
    chosen = np.empty(m, dtype=np.int64)
    c = 0
    clock = start
    slack = INF
    for s in live:
        if done[s] == 0:
            if clock + p1 > deadline[s]:
                continue
            clock += p1
            if deadline[s] - clock < slack:
                slack = deadline[s] - clock
        chosen[c] = s
        c += 1
    return dropped[:nd], chosen[:c], slack


@njit(cache=True)
def _window_plan(start: float, chosen: np.ndarray, outcomes: bool, done: np.ndarray,
                 conf: np.ndarray, weight: np.ndarray, deadline: np.ndarray,
                 plan_s: np.ndarray, quantum: float, horizon: int, flat: bool,
                 mean: np.ndarray, cond: np.ndarray, edges: np.ndarray, nbins: np.ndarray,
                 deepen_slack: float):
    """
    ``ImpreciseDP.plan_depths`` on slots: (order, depths per row, slack per row, levels).

    ``outcomes``: one row per confidence bin of the front's exit (the contingent plan),
    else one row for the front as it is; ``deepen_slack``: see ``plan_window``.
    """
    n = len(mean)
    p1 = plan_s[1]
    c = len(chosen)
    nw = min(c, horizon)
    order = chosen[:nw]
    # The mandatory stages after the window, reserved behind it.
    reserve, _, _ = _block(chosen, nw, done, deadline, p1)
    if nw > 1 and reserve >= deadline[order[nw - 1]]:
        reserve = INF
    u = np.zeros(n + 1)
    times = np.zeros((max(nw - 1, 1), n))
    rewards = np.zeros((max(nw - 1, 1), n))
    nopt = np.zeros(max(nw - 1, 1), dtype=np.int64)
    dls = np.zeros(max(nw - 1, 1))
    for j in range(1, nw):
        s = order[j]
        k = done[s]
        _utility(k, conf[s], flat, mean, cond, edges, nbins, u)
        lo = max(k, 1)
        acc = 0.0
        for o in range(n - lo + 1):
            d = lo + o
            if d > k:
                acc += plan_s[d]
            times[j - 1, o] = acc
            rewards[j - 1, o] = weight[s] * u[d]
        nopt[j - 1] = n - lo + 1
        dls[j - 1] = deadline[s]
    if nw == 1:
        times, rewards, nopt, dls = times[:0], rewards[:0], nopt[:0], dls[:0]
    f = order[0]
    k = done[f]
    lo = max(k, 1)
    m0 = n - lo + 1
    f_times = np.zeros(m0)
    acc = 0.0
    for o in range(m0):
        if lo + o > k:
            acc += plan_s[lo + o]
        f_times[o] = acc
    if outcomes:
        nb = nbins[k - 1] if not flat else 1
        f_rew = np.zeros((nb, m0))
        for b in range(nb):
            for o in range(m0):
                d = lo + o
                f_rew[b, o] = weight[f] * (mean[d - 1] if flat else cond[k - 1, b, d])
    else:
        _utility(k, conf[f], flat, mean, cond, edges, nbins, u)
        f_rew = np.zeros((1, m0))
        for o in range(m0):
            f_rew[0, o] = weight[f] * u[lo + o]
    picked, slack, level = plan_window(start, reserve, quantum, deadline[f], f_times, f_rew,
                                       dls, times, rewards, nopt, deepen_slack)
    depths = np.empty((picked.shape[0], nw), dtype=np.int64)
    for b in range(picked.shape[0]):
        depths[b, 0] = lo + picked[b, 0]
        for j in range(1, nw):
            depths[b, j] = max(done[order[j]], 1) + picked[b, j]
    return order, depths, slack, level


@njit(cache=True)
def prepare_plan(start: float, f: np.ndarray, i: np.ndarray, run: np.ndarray, stage: int,
                 plan_s: np.ndarray, quantum: float, horizon: int, flat: bool,
                 mean: np.ndarray, cond: np.ndarray, edges: np.ndarray, nbins: np.ndarray,
                 deepen_slack: float):
    """
    Make the contingent plan of ``planner.prepare`` from slot arrays, in one call.

    ``f`` and ``i``: the planner's ``Mirror`` (per slot: deadline, arrival, weight, last
    confidence; id, stages done, -, -, pending); ``run``: the slots of the stage that
    starts (at ``stage``; empty when idle), assumed to end at ``start``; ``plan_s[d]``:
    the planned time of stage d. Returns (mode, ids, rows, rowmap, block reserve, block
    count, block last deadline, go_on): mode 1 when the first running task is the front
    after its stage (one plan per confidence bin of its exit), 2 when not, 0 when idle
    (one plan: the tasks as they are); ``ids``: the ids of the tasks planned, EDF;
    ``rows``: the distinct depth rows, in order of first use (most bins share a plan);
    ``rowmap``: the row of each bin. So the planner makes one plan object per distinct
    row.
    """
    n = len(mean)
    p1 = plan_s[1]
    deadline, arrival, weight = f[0], f[1], f[2]
    tid = i[0]
    done = i[1].copy()
    conf = f[3].copy()
    x = -1
    for j in range(len(run)):
        done[run[j]] = stage
        conf[run[j]] = np.nan        # batch mates: planned on mean accuracies
    if len(run) > 0:
        x = run[0]
    _, chosen, _ = _prelude(start, np.flatnonzero(i[4]), done, deadline, arrival, tid, p1)
    c = len(chosen)
    mode = 0
    if x >= 0:
        mode = 1 if c > 0 and chosen[0] == x else 2
    if c == 0:
        return (mode, tid[chosen], np.zeros((1, 0), dtype=np.int64),
                np.zeros(1, dtype=np.int64), INF, 0, -INF, False)
    order, depths, _, level = _window_plan(start, chosen, mode == 1, done, conf, weight,
                                           deadline, plan_s, quantum, horizon, flat, mean,
                                           cond, edges, nbins, deepen_slack)
    r, bn, last = _block(chosen, 1 if mode == 1 else 0, done, deadline, p1)
    k = done[order[0]]
    go_on = k < n and (len(level) < 2 or level[1] >= 0)
    rows, rowmap = _distinct_rows(depths)
    return mode, tid[order], rows, rowmap, r, bn, last, go_on


@njit(cache=True)
def _distinct_rows(depths: np.ndarray):
    """Return the distinct rows of ``depths`` (in order of first use) and each row's index."""
    nb, w = depths.shape
    rowmap = np.empty(nb, dtype=np.int64)
    first = np.empty(nb, dtype=np.int64)
    u = 0
    for b in range(nb):
        found = -1
        for q in range(u):
            r = first[q]
            same = True
            for j in range(w):
                if depths[r, j] != depths[b, j]:
                    same = False
                    break
            if same:
                found = q
                break
        if found < 0:
            first[u] = b
            found = u
            u += 1
        rowmap[b] = found
    return depths[first[:u]], rowmap


@njit(cache=True)
def inline_plan(start: float, f: np.ndarray, i: np.ndarray, plan_s: np.ndarray,
                quantum: float, horizon: int, lazy: bool, flat: bool, mean: np.ndarray,
                cond: np.ndarray, edges: np.ndarray, nbins: np.ndarray,
                deepen_slack: float):
    """
    ``ImpreciseDP.plan`` on arrays of the pending tasks (one column per task).

    Returns (dropped, lazy, chosen, order, depths, min slack): with ``lazy`` the
    earliest-deadline task has no result and every chosen mandatory stage is planned at
    depth 1 (the DP is not run: it would run that stage next whatever its plan);
    otherwise ``depths[0]`` are the DP's depths of the tasks in ``order``.
    """
    p1 = plan_s[1]
    done = i[1]
    dropped, chosen, mslack = _prelude(start, np.flatnonzero(i[4]), done, f[0], f[1], i[0],
                                       p1)
    empty = np.zeros((1, 0), dtype=np.int64)
    if len(chosen) == 0:
        return dropped, False, chosen, chosen, empty, INF
    if lazy and done[chosen[0]] == 0:
        return dropped, True, chosen, chosen[:0], empty, mslack
    order, depths, slack, _ = _window_plan(start, chosen, False, done, f[3], f[2], f[0],
                                           plan_s, quantum, horizon, flat, mean, cond,
                                           edges, nbins, deepen_slack)
    return dropped, False, chosen, order, depths, slack[0]


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
    """
    Compile (or load from numba's cache) every kernel before the first real decision.

    With the argument types the scheduler passes, so that no compilation (seconds) ever
    happens inside a decision or a plan (a test checks that each kernel has one
    signature after use).
    """
    one = np.zeros((1, 2))
    plan_window(0.0, INF, 0.01, 1.0, np.array([0.0, 0.1]), one, np.array([1.0]),
                np.array([[0.1, 0.2]]), one, np.array([2], dtype=np.int64), 0.0)
    f = np.zeros((5, 2))
    i = np.zeros((5, 2), dtype=np.int64)
    f[0], i[4] = 1.0, 1
    prepare_plan(0.0, f, i, np.zeros(1, dtype=np.int64), 1, np.array([0.0, 0.1, 0.1]), 0.01, 6,
                 False, np.array([0.5, 0.6]), np.zeros((2, 1, 3)),
                 np.array([[0.0, np.inf], [0.0, np.inf]]), np.array([1, 1], dtype=np.int64), 0.0)
    inline_plan(0.0, f, i, np.array([0.0, 0.1, 0.1]), 0.01, 6, True, False,
                np.array([0.5, 0.6]), np.zeros((2, 1, 3)),
                np.array([[0.0, np.inf], [0.0, np.inf]]), np.array([1, 1], dtype=np.int64),
                0.0)


warm_up()
