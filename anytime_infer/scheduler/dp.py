"""
The dynamic program of Yao et al. (RTCSA 2020) over tasks in deadline order.

Given tasks 1..n in EDF order, each with options (depth, reward, remaining time), choose
one option per task maximising total reward such that, running the tasks one after another
in that order, every task that still has work finishes by its deadline. Rewards are
quantised to integer multiples of ``quantum`` (default 0.01 of expected accuracy x weight).

The paper's table keeps, for tasks 1..i and total reward r, the minimum finish time. This
module keeps the same table from the other end, which is equivalent and cheaper to keep
current: for the suffix i..n and total (extra) reward r, the *latest start time* S_i[r] at
which tasks i..n can still all meet their deadlines,

    S_i[r] = max_o  min(d_i, S_{i+1}[r - q_io]) - c_io      (c_io > 0)
                    S_{i+1}[r - q_io]                       (no work left: stop now)

with S_{n+1}[0] = +inf. The best plan at time t is the largest r with S_1[r] >= t. Suffix
tables do not depend on t nor on the tasks before them, so when the front task finishes a
stage (the common event) only its own choice is re-evaluated against the cached S_2, and
when it is published S_3 is already there; an arrival (appended at the end in EDF order)
rebuilds the tables.

Complexity: O(n * m * R) time and O(n * R) memory for a rebuild, with m <= L + 1 options
per task and R = sum of the tasks' reward spans / quantum; O(m * R) for a front update.
Both are vectorised over r with numpy, so the Python-level work is O(n) and O(1).
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

INF = float('inf')
EPS = 1e-9       # seconds: float sums of stage times need not match to the last bit


@dataclass
class TaskOptions:
    """The choices for one task: parallel lists of depths, rewards and remaining times."""

    depths: Sequence[int]
    rewards: Sequence[float]
    times: Sequence[float]        # remaining time (s) to reach each depth
    deadline: float
    _q: Optional[np.ndarray] = None
    _quantum: float = 0.0

    def levels(self, quantum: float) -> np.ndarray:
        """Return the integer reward steps of the options, cached per quantum."""
        if self._q is None or self._quantum != quantum:
            self._q, self._quantum = quantise(self.rewards, quantum), quantum
        return self._q


def quantise(rewards: Sequence[float], quantum: float) -> np.ndarray:
    """Integer reward levels above the task's smallest option."""
    q = np.rint(np.asarray(rewards, dtype=float) / quantum).astype(np.int64)
    return q - q.min()


@dataclass
class Row:
    """S_i and the option achieving each entry, for one task of the suffix."""

    latest_start: np.ndarray
    choice: np.ndarray
    q: np.ndarray


BASE = np.array([INF])
_NEG = np.full(4096, -INF)
_INDEX: dict = {}


def _gather_index(q: np.ndarray, span: int, size: int) -> np.ndarray:
    key = (q.tobytes(), size)
    idx = _INDEX.get(key)
    if idx is None:
        if len(_INDEX) > 4096:
            _INDEX.clear()
        idx = (span - q)[:, None] + np.arange(size)[None, :]
        _INDEX[key] = idx
    return idx


def suffix_row(opt: TaskOptions, after: np.ndarray, quantum: float) -> Row:
    """S_i from S_{i+1} (``after``) for one task (about six numpy calls)."""
    q = opt.levels(quantum)
    span = int(q.max())
    size = len(after) + span
    if span <= len(_NEG):
        padded = np.concatenate((_NEG[:span], after, _NEG[:span]))
    else:
        padded = np.concatenate((np.full(span, -INF), after, np.full(span, -INF)))
    cand = padded[_gather_index(q, span, size)]
    times = np.asarray(opt.times, dtype=float)
    # Options with work must end by the deadline; "stop now" has no deadline to meet.
    limit = np.where(times > 0, opt.deadline, INF)
    np.minimum(cand, limit[:, None], out=cand)
    cand -= times[:, None]
    choice = cand.argmax(axis=0)
    return Row(cand.max(axis=0), choice, q)


def build_rows(opts: Sequence[TaskOptions], quantum: float,
               reuse: Optional[List[Row]] = None,
               base: Optional[np.ndarray] = None) -> List[Row]:
    """
    Rows for a suffix of tasks (last task last); ``reuse`` holds valid rows of a tail.

    ``base`` is the latest start allowed after the last task (default: unbounded).
    """
    reuse = reuse or []
    rows: List[Row] = list(reuse)
    after = rows[0].latest_start if rows else (BASE if base is None else base)
    for opt in reversed(opts[:len(opts) - len(reuse)]):
        row = suffix_row(opt, after, quantum)
        rows.insert(0, row)
        after = row.latest_start
    return rows


def best_level(latest_start: np.ndarray, start: float) -> int:
    """Largest r whose latest start is at or after ``start`` (-1 if none)."""
    ok = np.flatnonzero(latest_start >= start - EPS)
    return int(ok[-1]) if ok.size else -1


def backtrack(rows: Sequence[Row], level: int) -> List[int]:
    """Option index of every task of the suffix for a total level."""
    picked = []
    for row in rows:
        o = int(row.choice[level])
        picked.append(o)
        level -= int(row.q[o])
    return picked


def choose_front(now: float, front: TaskOptions, rest: Sequence[Row],
                 quantum: float, base: Optional[np.ndarray] = None) -> Tuple[int, List[int]]:
    """
    Best option of the front task given the cached suffix tables of the others.

    Exact: the DP over front + rest is max_o q_o + best(rest starting at now + c_o).
    """
    q = front.levels(quantum)
    after = rest[0].latest_start if rest else (BASE if base is None else base)
    best_total, best_o, best_r = -1, -1, -1
    for o, (c, qo) in enumerate(zip(front.times, q)):
        end = now + c
        if c > 0 and end > front.deadline + EPS:
            continue
        r = best_level(after, end)
        if r >= 0 and qo + r > best_total:
            best_total, best_o, best_r = int(qo + r), o, r
    if best_o < 0:
        raise ValueError('no feasible assignment: shed infeasible tasks before planning')
    return best_o, (backtrack(rest, best_r) if rest else [])


def solve(now: float, tasks: List[TaskOptions], quantum: float = 0.01) -> List[int]:
    """
    Return the chosen option index of every task (same order as ``tasks``).

    Every task must have at least one option that is feasible on its own at ``now``;
    the caller sheds the others first.
    """
    if not tasks:
        return []
    rest = build_rows(tasks[1:], quantum)
    o, picked = choose_front(now, tasks[0], rest, quantum)
    return [o] + picked


def brute_force(now: float, tasks: List[TaskOptions], quantum: float = 0.01) -> int:
    """Best total quantised extra reward by enumeration (for tests on small instances)."""
    import itertools
    q_rewards = [quantise(t.rewards, quantum) for t in tasks]
    best = -1
    for combo in itertools.product(*[range(len(t.depths)) for t in tasks]):
        if is_feasible(now, tasks, list(combo)):
            best = max(best, sum(int(q[o]) for q, o in zip(q_rewards, combo)))
    return best


def total_reward(tasks: List[TaskOptions], picked: List[int], quantum: float = 0.01) -> int:
    """Quantised extra reward of an assignment (same measure as ``brute_force``)."""
    return sum(int(quantise(t.rewards, quantum)[o]) for t, o in zip(tasks, picked))


def is_feasible(now: float, tasks: List[TaskOptions], picked: List[int]) -> bool:
    """Whether an assignment meets every deadline when run in the given order."""
    clock = now
    for t, o in zip(tasks, picked):
        clock += t.times[o]
        if t.times[o] > 0 and clock > t.deadline + EPS:
            return False
    return True
