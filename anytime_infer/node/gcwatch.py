"""
Python's garbage collector in a latency-bound node: collect at configure, report pauses.

A full (generation 2) collection stops every thread of the process while it walks every
tracked object: after torch, rclpy and numba are loaded that is ~285,000 objects and
60-120 ms on this project's machine. CPython runs one only when the objects that survived
since the last full collection exceed a quarter of those it kept then; so a full
collection right after configure (the model, the modules, the compiled kernels all made)
puts the next one far away (no full collection ran during any of the demo's 20 s runs
since; before, 1-2 of its 1200 frames were late in some runs, when one did). Freezing the
heap instead (``gc.freeze``) was tried and made overload worse: 2-20 of ~1100 frames late
in the node's overload test against 0-2 with this collection. The pauses that remain are
measured and published (``GcPauses``).
"""
import gc
import threading
import time
from typing import Dict, List


def collect_heap() -> float:
    """Run a full collection now (after configure); return how long it took (s)."""
    t0 = time.perf_counter()
    gc.collect()
    return time.perf_counter() - t0


class GcPauses:
    """
    Time every collection (``gc.callbacks``); report the longest since the last report.

    ``report()`` returns, per generation, the count and the longest pause (ms) since it was
    last called: what ``/diagnostics`` shows.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._start: Dict[int, float] = {}
        self._count = [0, 0, 0]
        self._max_s = [0.0, 0.0, 0.0]

    def install(self) -> None:
        """Start timing collections (idempotent)."""
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        """Stop timing collections."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: Dict) -> None:
        # Runs inside the collection, on whichever thread triggered it.
        key = threading.get_ident()
        if phase == 'start':
            self._start[key] = time.perf_counter()
            return
        t0 = self._start.pop(key, None)
        if t0 is None:
            return
        spent = time.perf_counter() - t0
        g = min(int(info.get('generation', 2)), 2)
        with self._lock:
            self._count[g] += 1
            if spent > self._max_s[g]:
                self._max_s[g] = spent

    def report(self) -> Dict[str, float]:
        """Return counts and longest pauses per generation since the last report."""
        with self._lock:
            count, longest = list(self._count), list(self._max_s)
            self._count, self._max_s = [0, 0, 0], [0.0, 0.0, 0.0]
        out: Dict[str, float] = {}
        for g in range(3):
            out[f'gc{g}_count'] = float(count[g])
            out[f'gc{g}_pause_ms_max'] = 1000.0 * longest[g]
        return out


def pause_keys() -> List[str]:
    """Return the keys ``GcPauses.report`` gives (for documentation and tests)."""
    return [f'gc{g}_{k}' for g in range(3) for k in ('count', 'pause_ms_max')]
