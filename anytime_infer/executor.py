"""
The executor: a worker thread that owns the device and runs the model stage by stage.

Frames come in as ``FrameJob``s (one or more preprocessed crops each); every crop becomes
a scheduler ``Task`` whose intermediate state stays on the device between stages. At every
arrival and stage boundary the worker asks the policy what to do, runs the chosen stage
(batched when the plan says so), times it (CUDA events on a GPU, a monotonic clock on the
CPU) to keep the latency estimates current, and hands every finished frame to a callback
with exactly one outcome: on time, late, or dropped with a reason.
"""
from collections import deque
from dataclasses import dataclass, field
import itertools
import logging
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence

from anytime_infer.model.data import Preprocess, to_tensor_batch
from anytime_infer.scheduler.policies import make_policy, Policy
from anytime_infer.scheduler.profiles import ModelProfile
from anytime_infer.scheduler.task import ERROR, QUEUE_FULL, SHUTDOWN, Task
from anytime_infer.scheduler.timing import StageTimes
import numpy as np
import torch

ON_TIME, LATE, DROPPED = 'on_time', 'late', 'dropped'
log = logging.getLogger('anytime_infer.executor')


@dataclass
class FrameJob:
    """One camera frame: its crops (uint8, model input size) and its timing."""

    stream: int
    arrival: float                 # seconds on the executor's clock
    deadline: float                # absolute, same clock
    inputs: np.ndarray             # (n, H, W, C) uint8
    rois: List[tuple] = field(default_factory=list)   # (x, y, w, h) per input
    weight: float = 1.0
    stamp: float = 0.0
    meta: Any = None               # the caller's (header, topic, ...)
    frame_id: int = -1


@dataclass
class CropResult:
    """What the deepest completed exit said about one crop."""

    class_id: int
    label: str
    confidence: float
    depth: int
    num_stages: int
    expected_accuracy: float
    roi: tuple


@dataclass
class FrameOutcome:
    """The one outcome of a frame."""

    job: FrameJob
    outcome: str
    reason: str
    results: List[CropResult]
    published_at: float


def pick_device(requested: str = 'auto') -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU."""
    if requested in ('', 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    dev = torch.device(requested)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {requested!r} requested but CUDA is not available')
    return dev


class StageTimer:
    """Times one stage run: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'

    def __enter__(self) -> 'StageTimer':
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0


class Executor:
    """The worker: owns the device, the tasks' states and the policy."""

    def __init__(self, net, card: Dict, profile: ModelProfile, temperatures: Sequence[float],
                 on_outcome: Callable[[FrameOutcome], None], policy: str = 'imprecise_dp',
                 depth: Optional[int] = None, device: str = 'auto', max_pending: int = 64,
                 clock: Callable[[], float] = time.monotonic, percentile: int = 95,
                 batching: bool = True, publish_margin: float = 0.002) -> None:
        self.device = pick_device(device)
        self.net = net.to(self.device).eval()
        self.card = card
        self.classes = list(card['classes'])
        self.pre = Preprocess(**card['preprocess'])
        self.profile = profile
        self.temps = torch.tensor(list(temperatures), dtype=torch.float32)
        self.times = StageTimes(profile, percentile=percentile)
        self.policy: Policy = make_policy(policy, profile, depth=depth, times=self.times,
                                          batching=batching)
        if self.policy.simulation_only:
            raise ValueError(f'policy {policy!r} is for simulation only (it needs ground truth)')
        self.on_outcome = on_outcome
        self.max_pending = max_pending
        self.publish_margin = publish_margin
        self.clock = clock
        self._cond = threading.Condition()
        self._lock = threading.RLock()       # task state: worker, watcher, stop()
        self._inbox: List[FrameJob] = []
        self._tasks: Dict[int, Task] = {}
        self._state: Dict[int, torch.Tensor] = {}
        self._result: Dict[int, CropResult] = {}
        self._task_frame: Dict[int, int] = {}
        self._frames: Dict[int, dict] = {}
        self._ids = itertools.count()
        self._frame_ids = itertools.count()
        self._running = False
        self._thread: Optional[threading.Thread] = None
        self.decision_s: Deque[float] = deque(maxlen=10000)   # recent, for statistics
        self.stage_s: Deque[float] = deque(maxlen=10000)

    # -- public ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread."""
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._loop, name='anytime_infer_worker',
                                        daemon=True)
        self._thread.start()
        self._watcher: Optional[threading.Thread] = None
        if self.policy.anytime:
            self._watcher = threading.Thread(target=self._watch, daemon=True,
                                             name='anytime_infer_deadlines')
            self._watcher.start()

    def submit(self, job: FrameJob) -> bool:
        """Queue a frame; a full queue ends it at once as dropped / queue_full."""
        with self._cond:
            job.frame_id = next(self._frame_ids)
            accept = self._running and self.pending() < self.max_pending
            if accept:
                self._inbox.append(job)
                self._cond.notify()
        if not accept:
            reason = QUEUE_FULL if self._running else SHUTDOWN
            self.on_outcome(FrameOutcome(job, DROPPED, reason, [], self.clock()))
        return accept

    def pending(self) -> int:
        """Return the number of frames queued or in progress."""
        return len(self._inbox) + len(self._frames)

    def set_policy(self, name: str, depth: Optional[int] = None) -> None:
        """
        Swap the policy between two decisions (tasks in flight carry over).

        Raises ValueError for an unknown or simulation-only policy, and while running for
        a switch between an anytime and a plain policy (the deadline watcher is started or
        not at ``start``).
        """
        # The DP policies keep the batching of the one they replace (greedy never batches:
        # then the executor's default, on).
        batching = getattr(self.policy, 'batching', True) or self.policy.name == 'greedy'
        new = make_policy(name, self.profile, depth=depth, times=self.times,
                          batching=batching)
        if new.simulation_only:
            raise ValueError(f'policy {name!r} is for simulation only (it needs ground truth)')
        with self._lock:
            if self._running and new.anytime != self.policy.anytime:
                raise ValueError(
                    f'switching from {self.policy.name} to {name} changes whether results '
                    'are published at their deadline: deactivate first')
            self.policy = new

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker; publish what has a result, drop the rest as ``shutdown``."""
        with self._cond:
            self._running = False
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if getattr(self, '_watcher', None) is not None:
            self._watcher.join(timeout)
            self._watcher = None
        now = self.clock()
        with self._cond:
            inbox, self._inbox = self._inbox, []
        for job in inbox:
            self.on_outcome(FrameOutcome(job, DROPPED, SHUTDOWN, [], now))
        with self._lock:
            for tid, task in list(self._tasks.items()):
                if task.stages_done >= 1:
                    self._finish(tid, now)
                else:
                    self._drop(tid, SHUTDOWN, now)

    @torch.inference_mode()
    def warm_up(self, runs: int = 5) -> None:
        """Run every stage a few times at batch 1 (kernel selection, allocator)."""
        shape = (1, self.pre.channels, self.pre.height, self.pre.width)
        for _ in range(runs):
            x = torch.zeros(shape, device=self.device)
            for k in range(1, self.net.num_stages + 1):
                x, _ = self.net.run_stage(k, x)
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    # -- worker ---------------------------------------------------------------------------
    def _admit(self, jobs: List[FrameJob]) -> None:
        for job in jobs:
            try:
                x = to_tensor_batch(job.inputs, self.pre).to(self.device, non_blocking=True)
            except Exception as e:  # noqa: B902 - a bad job ends as an error, not the worker
                log.error('cannot prepare frame %d: %s', job.frame_id, e)
                self.on_outcome(FrameOutcome(job, DROPPED, ERROR, [], self.clock()))
                continue
            rois = job.rois or [(0, 0, 0, 0)] * len(job.inputs)
            tids = []
            for i in range(len(job.inputs)):
                tid = next(self._ids)
                self._tasks[tid] = Task(tid, job.stream, job.arrival, job.deadline,
                                        self.net.num_stages, job.weight, stamp=job.stamp)
                self._state[tid] = x[i:i + 1]
                self._task_frame[tid] = job.frame_id
                tids.append(tid)
            self._frames[job.frame_id] = {'job': job, 'open': set(tids), 'results': [],
                                          'reasons': [], 'late': False, 'rois': rois,
                                          'tids': tids}

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._running:
                    return
                if not self._inbox and not self._tasks:
                    self._cond.wait(0.1)
                jobs, self._inbox = self._inbox, []
            if jobs:
                with self._lock:
                    self._admit(jobs)
            if not self._tasks:
                continue
            try:
                self._step()
            except Exception:  # noqa: B902 - the worker must go on; the tasks end as errors
                log.exception('scheduler step failed; dropping the tasks in flight')
                with self._lock:
                    now = self.clock()
                    for tid in list(self._tasks):
                        self._drop(tid, ERROR, now)

    def _publish_due(self, now: float) -> float:
        """
        Publish results due within the margin at their depth; return the next due time.

        A result goes out ``publish_margin`` before its deadline (thread wake-up jitter
        would otherwise make it late by a fraction of a millisecond).
        """
        nxt = float('inf')
        margin = self.publish_margin
        for tid, task in list(self._tasks.items()):
            if task.stages_done >= 1:
                due = task.deadline - margin
                if due <= now:
                    self._finish(tid, now)
                elif due < nxt:
                    nxt = due
        return nxt

    def _watch(self) -> None:
        """
        Publish results when they fall due, whatever stage is running (the anytime promise).

        Without this watcher a result would go out only after the running stage ends.
        """
        while self._running:
            with self._lock:
                now = self.clock()
                nxt = self._publish_due(now)
            time.sleep(min(max(nxt - now, 0.0002), 0.005))

    def _step(self) -> None:
        with self._lock:
            now = self.clock()
            if self.policy.anytime:
                self._publish_due(now)
            t0 = time.perf_counter()
            dec = self.policy.decide(now, list(self._tasks.values()))
            self.decision_s.append(time.perf_counter() - t0)
            now = self.clock()
            for tid, reason in dec.drop:
                if tid in self._tasks:
                    self._drop(tid, reason, now)
            for tid in dec.finish:
                if tid in self._tasks:
                    self._finish(tid, now)
            run = [t for t in dec.run if t in self._tasks]
            idle = not run and not dec.drop and not dec.finish
            if idle:
                wait = min((t.deadline for t in self._tasks.values()),
                           default=now + 0.1) - now
        if run:
            self._run_stage(run)
        elif idle:
            # Idle until the next arrival or the earliest deadline.
            with self._cond:
                if not self._inbox and self._running:
                    self._cond.wait(min(max(wait, 0.0005), 0.1))

    @torch.inference_mode()
    def _run_stage(self, tids: List[int]) -> None:
        with self._lock:
            tids = [t for t in tids if t in self._tasks]   # the watcher may have published
            if not tids:
                return
            stage = self._tasks[tids[0]].stages_done + 1
            shape = self._state[tids[0]].shape
            tids = [t for t in tids if self._state[t].shape == shape]   # batch like with like
            inputs = [self._state[t] for t in tids]
        t0 = time.perf_counter()
        try:
            x = torch.cat(inputs) if len(inputs) > 1 else inputs[0]
            with StageTimer(self.device) as timer:
                state, logits = self.net.run_stage(stage, x)
            probs = torch.softmax(logits.float() / self.temps[stage - 1].to(logits.device), 1)
            conf, pred = probs.max(dim=1)
            conf, pred = conf.cpu().numpy(), pred.cpu().numpy()
            # The scheduler plans with what a stage costs the worker end to end (batching,
            # exit softmax, copy back); the stage itself is timed apart (CUDA events).
            dispatch = time.perf_counter() - t0
        except Exception as e:  # noqa: B902 - a failing stage ends its tasks, not the node
            log.error('stage %d failed on %d task(s): %s', stage, len(tids), e)
            with self._lock:
                now = self.clock()
                for t in tids:
                    if t in self._tasks:
                        self._drop(t, ERROR, now)
            return
        self.stage_s.append(timer.seconds)
        self.times.observe(stage, len(tids), max(dispatch, timer.seconds))
        with self._lock:
            for i, tid in enumerate(tids):
                task = self._tasks.get(tid)
                if task is None:      # published at its deadline while the stage ran
                    continue
                task.stages_done = stage
                task.confidences.append(float(conf[i]))
                self._state[tid] = state[i:i + 1]
                frame = self._frames[self._task_frame[tid]]
                roi = frame['rois'][frame['tids'].index(tid)]
                self._result[tid] = CropResult(int(pred[i]), self.classes[int(pred[i])],
                                               float(conf[i]), stage, self.net.num_stages,
                                               self.policy.expected_accuracy(task), roi)
                now = self.clock()
                if task.complete or now >= task.deadline - self.publish_margin:
                    self._finish(tid, now)     # done, or due: publish what it has now

    # -- outcomes -------------------------------------------------------------------------
    def _close(self, tid: int) -> Optional[dict]:
        self._tasks.pop(tid, None)
        self._state.pop(tid, None)
        fid = self._task_frame.pop(tid)
        frame = self._frames[fid]
        frame['open'].discard(tid)
        return frame

    def _finish(self, tid: int, now: float) -> None:
        task = self._tasks[tid]
        frame = self._close(tid)
        res = self._result.pop(tid, None)
        if res is not None:
            frame['results'].append(res)
        frame['late'] |= now > task.deadline
        self._maybe_emit(frame, now)

    def _drop(self, tid: int, reason: str, now: float) -> None:
        frame = self._close(tid)
        self._result.pop(tid, None)
        frame['reasons'].append(reason)
        self._maybe_emit(frame, now)

    def _maybe_emit(self, frame: dict, now: float) -> None:
        if frame['open']:
            return
        job = frame['job']
        del self._frames[job.frame_id]
        if frame['results']:
            outcome = LATE if frame['late'] else ON_TIME
            reason = ''
        else:
            outcome, reason = DROPPED, frame['reasons'][0] if frame['reasons'] else ERROR
        try:
            self.on_outcome(FrameOutcome(job, outcome, reason, frame['results'], now))
        except Exception:  # noqa: B902 - a failing callback must not stop the worker
            log.exception('outcome callback failed')
