"""
Python's garbage collector in a latency-bound node: freeze the startup heap, report pauses.

A full (generation 2) collection stops every thread of the process while it walks every
tracked object. After torch, rclpy and numba are loaded that is hundreds of thousands of
objects: 60-120 ms per collection on this project's machine, several times a minute
under traffic, and each one made frames late (the demo: 1-2 of 1200 late at 30 Hz, with
a 40 ms deadline, always when a full collection ran). The objects made at start-up (the
modules, the model, the compiled kernels) live as long as the node, so after configure
they are moved out of the collector's sight (``gc.freeze``) and a full collection only
walks what was made since: a few milliseconds. Cleanup unfreezes them, so that an old
model can be collected once it is let go.
"""
import gc
import threading
import time
from typing import Dict, List


def freeze_heap() -> int:
    """Collect, then freeze what is left (the node's long-lived objects); return its size."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def unfreeze_heap() -> None:
    """Give the frozen objects back to the collector (before a new model is loaded)."""
    gc.unfreeze()
    gc.collect()


class GcPauses:
    """
    Time every collection (``gc.callbacks``); report the longest since the last report.

    ``report()`` returns, per generation, the count and the longest pause (ms) since it was
    last called, and the frozen object count: what ``/diagnostics`` shows.
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
        out: Dict[str, float] = {'gc_frozen_objects': float(gc.get_freeze_count())}
        for g in range(3):
            out[f'gc{g}_count'] = float(count[g])
            out[f'gc{g}_pause_ms_max'] = 1000.0 * longest[g]
        return out


def pause_keys() -> List[str]:
    """Return the keys ``GcPauses.report`` gives (for documentation and tests)."""
    return ['gc_frozen_objects'] + [f'gc{g}_{k}' for g in range(3)
                                    for k in ('count', 'pause_ms_max')]
