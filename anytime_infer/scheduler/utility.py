"""
Input-dependent utility: the expected accuracy of stopping a task at each depth.

Before stage 1 the expected accuracy at depth l is exit l's mean accuracy. After stage k
it is P(exit l correct | exit k's confidence), read from the profile's calibration tables
(the latest exit's confidence summarises what is known of the input). The flat variant
ignores the input and always uses the mean accuracies.
"""
import bisect
import math
from typing import List, Optional

from anytime_infer.scheduler.profiles import ModelProfile
from anytime_infer.scheduler.task import Task
import numpy as np


class Utility:
    """Expected accuracy per depth for a task (weight applied by the caller)."""

    def __init__(self, profile: ModelProfile, flat: bool = False) -> None:
        self.n = profile.num_stages
        self.mean = np.maximum.accumulate(np.array(profile.exit_accuracy, dtype=float))
        self.edges = [list(e) for e in profile.conf_edges]
        self.cond = [non_decreasing([np.array(row, dtype=float) if row else None
                                     for row in per_k])
                     for per_k in profile.cond_accuracy]
        self.flat = flat
        self._rows: dict = {}

    def _bin(self, k: int, conf: float) -> int:
        edges = self.edges[k - 1]
        i = bisect.bisect_right(edges, conf) - 1
        return min(max(i, 0), len(edges) - 2)

    def expected(self, task: Task) -> np.ndarray:
        """Return the expected accuracy at depth 0..L (index = depth; depth 0 gives 0)."""
        out = np.zeros(self.n + 1)
        k = task.stages_done
        conf = task.last_confidence
        if self.flat or k == 0 or conf is None or not math.isfinite(conf):
            out[1:] = self.mean
            return out
        b = self._bin(k, conf)
        cond = self.cond[k - 1]
        out[1:k] = self.mean[:k - 1]          # not reachable any more; kept for completeness
        for lvl in range(k, self.n + 1):
            out[lvl] = cond[lvl - 1][b]
        return out

    def tables(self):
        """
        Return the utility as arrays for compiled code (cached): mean, cond, edges, nbins.

        ``cond[k - 1, b, d]``: expected accuracy at depth d >= k once exit k gave a
        confidence in bin b; ``edges[k - 1, :nbins[k - 1] + 1]``: exit k's bin edges (the
        rest +inf).
        """
        if getattr(self, '_tables', None) is None:
            n = self.n
            nb = [len(e) - 1 for e in self.edges]
            width = max(nb) if nb else 1
            cond = np.zeros((n, width, n + 1))
            edges = np.full((n, width + 1), np.inf)
            for k in range(1, n + 1):
                edges[k - 1, :nb[k - 1] + 1] = self.edges[k - 1]
                for lvl in range(k, n + 1):
                    cond[k - 1, :nb[k - 1], lvl] = self.cond[k - 1][lvl - 1]
            self._tables = (self.mean.copy(), cond, edges, np.array(nb, dtype=np.int64))
        return self._tables

    def outcomes(self, task: Task, k: int):
        """
        Return the expected accuracy per depth for every outcome of exit ``k``.

        Returns (bin edges of exit k's confidence, or None when the outcome does not
        matter; matrix outcomes x (L + 1)). Row b is what ``expected`` returns once exit k
        ran with a confidence in bin b: the planner evaluates every row before the exit
        has run and looks the right one up when it has.
        """
        if self.flat or k < 1:
            out = np.zeros((1, self.n + 1))
            out[0, 1:] = self.mean
            return None, out
        rows = self._rows.get(k)
        if rows is None:
            cond = self.cond[k - 1]
            nb = len(self.edges[k - 1]) - 1
            rows = np.zeros((nb, self.n + 1))
            rows[:, 1:k] = self.mean[:k - 1]
            for lvl in range(k, self.n + 1):
                rows[:, lvl] = cond[lvl - 1]
            self._rows[k] = rows
        return self.edges[k - 1], rows


def non_decreasing(rows: List[Optional[np.ndarray]]) -> List[Optional[np.ndarray]]:
    """
    Return per-depth rows (``None`` before the first) as their running maximum over depth.

    The imprecise-computation model's reward does not fall with more optional work: a
    table in which a deeper exit is less accurate in a bin than an earlier one is read as
    sampling noise of the calibration, and the deeper exit is planned as being as good.
    Met on a 297-sample trace (traffic_lights without exit 3, tables from half of it):
    one sample made exit 3 look 5 points worse than exit 2 in some bins, so the DP
    stopped there even at half load (0.991 against 1.000 at full depth). With a tie the
    DP still takes the shallower depth unless the slack is real (then it deepens).
    """
    out, best = [], None
    for row in rows:
        if row is not None:
            best = row.copy() if best is None else np.maximum(best, row)
            out.append(best)
        else:
            out.append(None)
    return out


class OracleUtility:
    """Clairvoyant utility (simulation only): 1 where the exit is correct, else 0."""

    def __init__(self, num_stages: int) -> None:
        self.n = num_stages
        self.flat = False

    def expected(self, task: Task) -> np.ndarray:
        """Exact correctness per depth, from the trace's ground truth."""
        out = np.zeros(self.n + 1)
        correct: List[bool] = task.exit_correct or [False] * self.n
        out[1:] = np.array(correct[:self.n], dtype=float)
        return out

    def outcomes(self, task: Task, k: int):
        """Return one row: the clairvoyant knows every outcome."""
        return None, self.expected(task)[None, :]
