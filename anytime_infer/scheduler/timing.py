"""Stage-time estimates for planning: a high percentile, kept current from measurements."""
from collections import deque
from typing import Deque, Dict, Tuple

from anytime_infer.scheduler.profiles import ModelProfile
import numpy as np


class StageTimes:
    """
    Planning times (s) per stage and batch size.

    Plans use a high percentile of the calibrated latency (``percentile``: 50, 95 or 99),
    not the mean. Measured stage times update the estimate: the planning time is the
    calibrated percentile scaled by the running ratio of measured to calibrated median,
    once enough measurements exist, so a slower device (or a busy one) is planned for.
    """

    def __init__(self, profile: ModelProfile, percentile: int = 95, window: int = 64,
                 adapt: bool = True) -> None:
        if percentile not in (50, 95, 99):
            raise ValueError('percentile must be 50, 95 or 99')
        self.profile = profile
        self.percentile = percentile
        self.adapt = adapt
        self._measured: Dict[Tuple[int, int], Deque[float]] = {}
        self._window = window
        self._scale: Dict[Tuple[int, int], float] = {}
        self._seen: Dict[Tuple[int, int], int] = {}
        self._cache: Dict[Tuple[int, int], float] = {}
        self.version = 0            # bumped whenever a planning time changes
        self.overhead = 0.0         # the planner's own time per stage boundary (s)

    def _calibrated(self, stage: int, batch: int) -> Tuple[float, float]:
        per_batch = self.profile.latency[stage - 1]
        if batch in per_batch:
            s = per_batch[batch]
        else:   # between calibrated sizes: scale the nearest smaller one linearly
            known = sorted(b for b in per_batch if b <= batch) or [min(per_batch)]
            base = per_batch[known[-1]]
            f = batch / known[-1]
            return base.p50 * f, getattr(base, 'p%d' % self.percentile) * f
        return s.p50, getattr(s, 'p%d' % self.percentile)

    def plan(self, stage: int, batch: int = 1) -> float:
        """Time (s) to plan for one run of ``stage`` on a batch."""
        key = (stage, batch)
        t = self._cache.get(key)
        if t is None:
            _, pct = self._calibrated(stage, batch)
            t = pct * self._scale.get(key, 1.0) + self.overhead
            self._cache[key] = t
        return t

    def observe(self, stage: int, batch: int, seconds: float) -> None:
        """Record a measured stage time and refresh the estimate."""
        if not self.adapt or not seconds > 0:
            return
        key = (stage, batch)
        q = self._measured.setdefault(key, deque(maxlen=self._window))
        q.append(seconds)
        self._seen[key] = seen = self._seen.get(key, 0) + 1
        if len(q) >= 8 and seen % 8 == 0:
            p50_cal, pct_cal = self._calibrated(stage, batch)
            med, tail = np.percentile(q, [50, self.percentile])
            # Plan for the slower of: calibration scaled by the measured slowdown, and the
            # measured percentile itself (a busy machine has longer tails, not only a
            # slower median).
            scale = max(0.5, float(med) / p50_cal, float(tail) / pct_cal)
            if abs(scale - self._scale.get(key, 1.0)) > 0.05:   # ignore small drifts
                self._scale[key] = scale
                self._cache.pop(key, None)
                self.version += 1

    def set_overhead(self, seconds: float) -> None:
        """
        Charge the planner's own decision time to every planned stage.

        Every stage boundary costs one decision, so a plan that ignores it runs late by
        that much per stage queued ahead. Changes under half the current value (or 20 us)
        are ignored so that cached plans stay valid.
        """
        if abs(seconds - self.overhead) > max(0.5 * self.overhead, 20e-6):
            self.overhead = seconds
            self._cache.clear()
            self.version += 1

    def remaining(self, stage_from: int, stage_to: int) -> float:
        """Planned time (s) to run stages stage_from+1 .. stage_to (batch 1)."""
        return sum(self.plan(k) for k in range(stage_from + 1, stage_to + 1))
