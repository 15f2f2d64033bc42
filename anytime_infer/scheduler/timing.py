"""
Stage-time estimates for planning: a high percentile, kept current from measurements.

Estimates forget what they can no longer observe. A stall (a CPU quota, another process,
a GC pause) inflates the measured times of the stages it hits; if plans kept those times,
they would stop running the stages (or drop every frame as infeasible) and nothing would
ever measure them again. So every measurement carries the time it was taken (when the
caller gives one), and measurements older than ``memory_s`` are forgotten: a stage that
has not run for that long is planned again from calibration (scaled by the device-wide
slowdown that stages still running measure), is run when that fits, and is measured anew.
Under a stall that persists this re-measures each stage at most once per ``memory_s``.
"""
from collections import deque
import math
from typing import Deque, Dict, List, Optional, Tuple

from anytime_infer.scheduler.profiles import ModelProfile
import numpy as np

MIN_SAMPLES = 8          # own measurements a (stage, batch) needs for its own scale
MIN_SCALE = 0.5          # never plan below half the calibrated time
DRIFT = 0.05             # scale changes smaller than this are ignored (plans stay cached)
SURGE = 1.5              # a measurement this many times the plan refreshes it at once


class StageTimes:
    """
    Planning times (s) per stage and batch size.

    Plans use a high percentile of the calibrated latency (``percentile``: 50, 95 or 99),
    not the mean. Measured stage times update the estimate: the planning time is the
    calibrated percentile scaled by the ratio of measured to calibrated times: the larger
    of its own median ratio and percentile ratio once a (stage, batch) has
    ``MIN_SAMPLES`` recent measurements, so a slower device (or a busy one) is planned
    for. It is never below the device-wide scale, the median ratio of the last
    measurements of every calibrated (stage, batch) (1 when there are none): a device
    that slows down (throttling) slows every stage, and stages run in batches or rarely
    then follow the ones run often. A measurement above ``SURGE`` times the plan refreshes
    the estimates at once.

    ``observe(..., now)`` and ``age(now)`` take a monotonic time (s); measurements older
    than ``memory_s`` are then forgotten (see the module docstring). Without a time (the
    simulator, where stage times never stall) nothing is forgotten.
    """

    def __init__(self, profile: ModelProfile, percentile: int = 95, window: int = 64,
                 adapt: bool = True, memory_s: float = 1.0) -> None:
        if percentile not in (50, 95, 99):
            raise ValueError('percentile must be 50, 95 or 99')
        self.profile = profile
        self.percentile = percentile
        self.adapt = adapt
        self.memory_s = memory_s
        # Per (stage, batch): (time or None, seconds) of the last `window` measurements.
        self._measured: Dict[Tuple[int, int], Deque[Tuple[Optional[float], float]]] = {}
        self._window = window
        self._scale: Dict[Tuple[int, int], float] = {}
        self._seen: Dict[Tuple[int, int], int] = {}
        self._cache: Dict[Tuple[int, int], float] = {}
        self._cal: Dict[Tuple[int, int], Tuple[float, float]] = {}
        # Device-wide: (time or None, measured / calibrated median) of calibrated keys.
        self._ratios: Deque[Tuple[Optional[float], float]] = deque(maxlen=window)
        self._device_scale = 1.0
        self._aged_at = -math.inf
        self.version = 0            # bumped whenever a planning time changes
        self.overhead = 0.0         # the planner's own time per stage boundary (s)

    def _calibrated(self, stage: int, batch: int) -> Tuple[float, float]:
        # Cached: observe() asks at every stage run (the profile does not change).
        key = (stage, batch)
        got = self._cal.get(key)
        if got is None:
            got = self._cal[key] = self._calibrated_now(stage, batch)
        return got

    def _calibrated_now(self, stage: int, batch: int) -> Tuple[float, float]:
        per_batch = self.profile.latency[stage - 1]
        if batch in per_batch:
            s = per_batch[batch]
        else:   # between calibrated sizes: scale the nearest smaller one linearly
            known = sorted(b for b in per_batch if b <= batch) or [min(per_batch)]
            base = per_batch[known[-1]]
            f = batch / known[-1]
            return base.p50 * f, getattr(base, 'p%d' % self.percentile) * f
        return s.p50, getattr(s, 'p%d' % self.percentile)

    def calibrated(self, stage: int, batch: int = 1) -> Tuple[float, float]:
        """Calibrated (median, planning percentile) time (s) of a stage at a batch size."""
        return self._calibrated(stage, batch)

    def scale(self, stage: int, batch: int = 1) -> float:
        """Return the factor the calibrated time of (stage, batch) is planned with now."""
        own = self._scale.get((stage, batch))
        return self._device_scale if own is None else max(own, self._device_scale)

    def plan(self, stage: int, batch: int = 1) -> float:
        """Time (s) to plan for one run of ``stage`` on a batch."""
        key = (stage, batch)
        t = self._cache.get(key)
        if t is None:
            version = self.version
            _, pct = self._calibrated(stage, batch)
            t = pct * self.scale(stage, batch) + self.overhead
            # Not kept if another thread (the executor records runs off the worker's
            # path) changed the estimates meanwhile: a stale value would stay cached.
            if self.version == version:
                self._cache[key] = t
        return t

    def observe(self, stage: int, batch: int, seconds: float,
                now: Optional[float] = None) -> None:
        """Record a measured stage time (taken at monotonic time ``now``); refresh."""
        if not self.adapt or not seconds > 0:
            return
        key = (stage, batch)
        q = self._measured.get(key)
        if q is None:
            q = self._measured[key] = deque(maxlen=self._window)
        q.append((now, seconds))
        if batch in self.profile.latency[stage - 1]:
            self._ratios.append((now, seconds / self._calibrated(stage, batch)[0]))
        self._seen[key] = seen = self._seen.get(key, 0) + 1
        # Every MIN_SAMPLES measurements, and at once for one far above the plan (a stall
        # starting, or a stage measured again after its estimate was forgotten).
        if seen % MIN_SAMPLES == 0 or seconds > SURGE * self.plan(stage, batch):
            self._refresh([key])

    def age(self, now: float) -> None:
        """
        Forget measurements taken before ``now - memory_s``; refresh what they shaped.

        Cheap enough for every stage boundary (a look at the oldest sample per key); it
        does its work at most every ``memory_s / 50``.
        """
        if not self.adapt or now - self._aged_at < self.memory_s / 50:
            return
        self._aged_at = now
        cutoff = now - self.memory_s
        stale: List[Tuple[int, int]] = []
        for key, q in self._measured.items():
            if q and q[0][0] is not None and q[0][0] < cutoff:
                while q and q[0][0] is not None and q[0][0] < cutoff:
                    q.popleft()
                stale.append(key)
        r = self._ratios
        aged_ratios = bool(r) and r[0][0] is not None and r[0][0] < cutoff
        while r and r[0][0] is not None and r[0][0] < cutoff:
            r.popleft()
        if stale or aged_ratios:
            self._refresh(stale)

    def _refresh(self, keys: List[Tuple[int, int]]) -> None:
        """Recompute the device-wide scale and the own scale of ``keys``."""
        changed = False
        dev = max(MIN_SCALE, _pct(sorted(v for _, v in self._ratios), 50.0)) \
            if self._ratios else 1.0
        if abs(dev - self._device_scale) > DRIFT:
            self._device_scale = dev
            changed = True
        for key in keys:
            q = self._measured.get(key, ())
            if len(q) >= MIN_SAMPLES:
                p50_cal, pct_cal = self._calibrated(*key)
                runs = sorted(s for _, s in q)
                med = _pct(runs, 50.0)
                # The largest run is left out of the tail: among 8-64 runs a p99 would be
                # that one run, and one preemption or GC pause is not a percentile (it
                # planned every stage past the deadline on a busy machine); two are.
                tail = _pct(runs[:-1], self.percentile)
                # Plan for the slower of: calibration scaled by the measured slowdown, and
                # the measured percentile itself (a busy machine has longer tails, not
                # only a slower median).
                scale = max(MIN_SCALE, float(med) / p50_cal, float(tail) / pct_cal)
                if abs(scale - self._scale.get(key, math.inf)) > DRIFT:
                    self._scale[key] = scale
                    changed = True
            elif self._scale.pop(key, None) is not None:
                changed = True      # too few recent measurements: the device-wide scale
        if changed:
            self._cache.clear()
            self.version += 1

    def set_overhead(self, seconds: float) -> None:
        """
        Charge the planner's own decision time to every planned stage.

        Every stage boundary costs one decision, so a plan that ignores it runs late by
        that much per stage queued ahead. Changes under half the current value (or 2 us)
        are ignored so that cached plans stay valid.
        """
        if abs(seconds - self.overhead) > max(0.5 * self.overhead, 2e-6):
            self.overhead = seconds
            self._cache.clear()
            self.version += 1

    def remaining(self, stage_from: int, stage_to: int) -> float:
        """Planned time (s) to run stages stage_from+1 .. stage_to (batch 1)."""
        return sum(self.plan(k) for k in range(stage_from + 1, stage_to + 1))


def _pct(ordered: List[float], q: float) -> float:
    """Percentile ``q`` of sorted values, linear as numpy's default (a few us less per call)."""
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def plan_times(times: 'StageTimes', n: int):
    """Return the planned time of each stage, index = stage (numpy; cached per version)."""
    return planned(times, n)[0]


def planned(times: 'StageTimes', n: int):
    """Return (planned time per stage as numpy, index = stage; cumulated), cached."""
    cached = getattr(times, '_plan_arrays', None)
    if cached is not None and cached[0] == times.version and len(cached[2]) == n + 1:
        return cached[1], cached[2]
    per, cumt = [0.0], [0.0]
    for d in range(1, n + 1):
        p = times.plan(d)
        per.append(p)
        cumt.append(cumt[-1] + p)
    out = np.array(per)
    times._plan_arrays = (times.version, out, cumt)
    return out, cumt
