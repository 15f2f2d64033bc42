"""
Budget bounds: the accuracy a policy with a given information can reach at a load.

At a load of x each frame gets on average 1/x of the full depth's time. Relaxing every
deadline to that average budget leaves a knapsack in which the best policy that decides
after exit k on what it knows then is exact to compute on a trace: a backward pass stops
a frame after exit k when that exit's accuracy in the frame's group beats the group's
mean value of going on (less lambda times the stage time), and the two multipliers that
bracket the budget are mixed (the linear programme's optimum).

What the policy knows after exit k (its *group*):

- ``oracle``: the frame itself (clairvoyant: which exits are correct);
- ``history``: the bins of exits 1..k together, everything confidences can tell (fewer
  bins per exit, ``HISTORY_BINS``), where the groups that split keep at least
  ``MIN_GROUP`` frames each (the rarer parts of a history are pooled: see
  ``history_groups``). Without that floor the groups of a trace with many exits hold a
  frame or two and the figure creeps toward the oracle's by memorising frames (a
  synthetic 6-exit trace of 3000 frames, 5 bins: 1382 groups after exit 5, 0.887 at 1x
  against 0.824 for the last bin; 0.840 with 3 bins);
- ``last``: the bin of exit k's confidence only, with each bin's expected values taken
  over all frames, as ``imprecise_dp``'s tables are. This information is not nested (exit
  k + 1's bin forgets exit k's), so the pass gives the DP-like policy, not the optimum
  over every policy that sees the last bin; ``history`` at the same bins bounds it.

For ``oracle`` and ``history`` the figure is the optimum over all (randomised) policies
with that information and the relaxed budget. The groups' accuracies are read from the
trace itself and no deadline, stage-time spread or decision time is charged, so each is
above what that information reaches in the simulator. Their ratio to the ``oracle``
figure says how much of the clairvoyant's accuracy the information can buy at all.
"""
from dataclasses import dataclass
from typing import Sequence, Tuple

from anytime_infer.scheduler.traces import confidence_bins, Trace
import numpy as np

KINDS = ('oracle', 'last', 'history')
HISTORY_BINS = 10
MIN_GROUP = 30       # frames a history group must keep to be refined by the next exit


@dataclass(frozen=True)
class BudgetBound:
    """The best accuracy found for one information at one load (budget per frame, s)."""

    kind: str
    load: float
    budget_s: float
    accuracy: float
    cost_s: float          # mean time spent per frame by the mixed policy (s)
    mean_depth: float


def information_groups(trace: Trace, kind: str, bins: int = 10,
                       min_group: int = MIN_GROUP) -> np.ndarray:
    """
    Return (samples x exits) group ids: what a policy knows of each frame after each exit.

    Bins are equal-mass over each exit's confidences (as the profile's tables are);
    ``min_group``: see ``history`` in the module docstring.
    """
    if kind not in KINDS:
        raise ValueError(f'unknown information {kind!r}; choose from {", ".join(KINDS)}')
    n, n_exits = trace.confidence.shape
    if kind == 'oracle':
        return np.tile(np.arange(n)[:, None], (1, n_exits))
    b = np.empty((n, n_exits), dtype=np.int64)
    for k in range(n_exits):
        b[:, k] = confidence_bins(np.nan_to_num(trace.confidence[:, k], nan=0.0), bins)[1]
    if kind == 'last':
        return b
    return history_groups(b, bins, min_group)


def history_groups(b: np.ndarray, bins: int, min_group: int) -> np.ndarray:
    """
    Return the history groups of per-exit bins ``b`` (samples x exits), floor applied.

    After each exit a group splits by that exit's bin; the parts below ``min_group``
    frames are pooled into one part of the same group, and that pool, if still below
    the floor, joins the group's largest part. So the information stays nested (every
    group is a union of parts of one earlier group) and no group that a split made is
    smaller than the floor.
    """
    groups = np.empty_like(b)
    acc = np.zeros(len(b), dtype=np.int64)
    for k in range(b.shape[1]):
        # Renumber after each exit so that ids stay small (bins ** k would overflow).
        _, child = np.unique(acc * (bins + 1) + b[:, k], return_inverse=True)
        child = child.reshape(-1)
        count = np.bincount(child)
        parent = np.zeros(len(count), dtype=np.int64)
        parent[child] = acc
        target = np.arange(len(count))
        pools: dict = {}
        for c in np.flatnonzero(count < min_group):
            pools.setdefault(int(parent[c]), []).append(int(c))
        for p, small in pools.items():
            big = [c for c in np.flatnonzero(parent == p) if count[c] >= min_group]
            into = small[0]
            if count[small].sum() < min_group and big:
                into = max(big, key=lambda c: count[c])
            target[small] = into
        _, acc = np.unique(target[child], return_inverse=True)
        acc = acc.reshape(-1)
        groups[:, k] = acc
    return groups


def lagrangian_policy(groups: np.ndarray, correct: np.ndarray, stage_s: Sequence[float],
                      lam: float) -> Tuple[float, float, float]:
    """
    Return (accuracy, mean time per frame (s), mean depth) of the best policy at ``lam``.

    Maximises accuracy - lam x time over policies that stop or go on after each exit on
    the frame's group there; stage 1 is mandatory.
    """
    n, n_exits = correct.shape
    s = np.asarray(stage_s, dtype=float)
    ok = correct.astype(float)
    acc = ok[:, -1].copy()          # realised accuracy of the policy from exit k on
    cost = np.zeros(n)              # realised time after exit k
    depth = np.full(n, float(n_exits))
    for k in range(n_exits - 2, -1, -1):
        g = groups[:, k]
        m = int(g.max()) + 1
        count = np.maximum(np.bincount(g, minlength=m), 1)
        go_on = np.bincount(g, acc - lam * (cost + s[k + 1]), m) / count
        stop = np.bincount(g, ok[:, k], m) / count
        cont = (go_on > stop)[g]
        acc = np.where(cont, acc, ok[:, k])
        cost = np.where(cont, cost + s[k + 1], 0.0)
        depth = np.where(cont, depth, float(k + 1))
    return float(acc.mean()), float(cost.mean() + s[0]), float(depth.mean())


def budget_bound(trace: Trace, stage_s: Sequence[float], load: float, kind: str,
                 bins: int = 10, min_group: int = MIN_GROUP) -> BudgetBound:
    """Return the best accuracy of a policy with ``kind`` information at ``load``."""
    if load <= 0:
        raise ValueError('load must be > 0')
    s = np.asarray(stage_s, dtype=float)
    if len(s) != trace.num_exits or not np.all(s > 0):
        raise ValueError(f'need {trace.num_exits} positive stage times, not {list(stage_s)}')
    budget = float(s.sum()) / load
    groups = information_groups(trace, kind, bins, min_group)
    ok = trace.correct

    def run(lam: float) -> Tuple[float, float, float]:
        return lagrangian_policy(groups, ok, s, lam)

    if budget < s[0]:
        # Not even the mandatory stage for every frame: the rest are dropped.
        a1 = float(ok[:, 0].mean())
        share = budget / s[0]
        return BudgetBound(kind, load, budget, a1 * share, budget, share)
    free = run(0.0)
    if free[1] <= budget:
        return BudgetBound(kind, load, budget, *free)
    # No optional stage pays once lam x its time exceeds any accuracy gain (at most 1).
    lo, hi = 0.0, 2.0 / float(s.min())
    at_lo, at_hi = free, run(hi)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        at = run(mid)
        if at[1] > budget:
            lo, at_lo = mid, at
        else:
            hi, at_hi = mid, at
    # Mix the two policies so that the mean time is the budget exactly.
    span = at_lo[1] - at_hi[1]
    w = (budget - at_hi[1]) / span if span > 0 else 0.0
    mixed = [w * a + (1 - w) * b for a, b in zip(at_lo, at_hi)]
    return BudgetBound(kind, load, budget, mixed[0], mixed[1], mixed[2])


def all_bounds(trace: Trace, stage_s: Sequence[float], loads: Sequence[float],
               bins: int = HISTORY_BINS):
    """Return {load: {kind: BudgetBound}} (``last`` and ``history`` with ``bins`` bins)."""
    return {load: {k: budget_bound(trace, stage_s, load, k, bins) for k in KINDS}
            for load in loads}


def bound_table(bounds) -> str:
    """Return a Markdown table of ``all_bounds``: each bound and its share of the oracle."""
    lines = ["| load | budget per frame (ms) | oracle | last exit (the DP's) | share | "
             'all exits | share |', '|---|---|---|---|---|---|---|']
    for load, r in bounds.items():
        o = r['oracle'].accuracy
        lines.append(f'| {load:g}x | {1000 * r["oracle"].budget_s:.3f} | {o:.4f} | '
                     f'{r["last"].accuracy:.4f} | {r["last"].accuracy / o:.3f} | '
                     f'{r["history"].accuracy:.4f} | {r["history"].accuracy / o:.3f} |')
    return '\n'.join(lines)
