"""
The executor: a worker thread that owns the device and runs the model stage by stage.

Frames come in as ``FrameJob``s (one or more preprocessed crops each); every crop becomes
a scheduler ``Task`` whose intermediate state stays on the device between stages. At every
arrival and stage boundary the worker asks the policy what to do, runs the chosen stage
(batched when the plan says so), times it (CUDA events on a GPU, a monotonic clock on the
CPU) to keep the latency estimates current, and hands every finished frame to a callback
with exactly one outcome: on time, late, or dropped with a reason.

Off the worker's path: with a contingent policy in ``planner='thread'`` mode a planner
thread makes the DP's plans while a stage runs and the worker only looks them up at the
boundary (``scheduler.planner``); outcomes are handed to a delivery thread that calls the
callback (the node's ROS publish), and ``stop()`` delivers what is left before it returns.

Faults (see README, "Faults and stalls"): a stage run that raises (out of memory included)
or gives a non-finite exit output is counted as a failure of that stage; each of its tasks
answers from its deepest finite exit, or is dropped with reason ``error``. After
``FAIL_LIMIT`` failing runs in a row of a stage, that stage and the ones after it are not
run again by this executor (``health().max_depth``). Measured stage times above
``STALL_FACTOR`` times the calibrated ones are reported as a stall (``health()``).
"""
from collections import deque
from dataclasses import dataclass, field
import heapq
import itertools
import logging
import math
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

from anytime_infer.model.data import Preprocess, to_tensor_batch
from anytime_infer.scheduler.planner import choose_planner, decides_on_slots, InlineLink, \
    OffPathPlanner
from anytime_infer.scheduler.policies import make_policy, Policy
from anytime_infer.scheduler.profiles import ModelProfile
from anytime_infer.scheduler.task import ERROR, INFEASIBLE, QUEUE_FULL, SHUTDOWN, Task
from anytime_infer.scheduler.timing import StageTimes, SURGE
import numpy as np
import torch

ON_TIME, LATE, DROPPED = 'on_time', 'late', 'dropped'
# A stage whose recent measured time (median of its last HEALTH_SAMPLES runs within
# HEALTH_WINDOW_S) exceeds its calibrated median by this factor is reported as stalled.
# A shared, busy CPU measures up to x3 (2 cores, load 5); thermal throttling (x10) and a CPU
# quota are far above it.
STALL_FACTOR = 5.0
HEALTH_SAMPLES = 16
# Runs of a stage within HEALTH_WINDOW_S that a slowdown needs before it is judged: a
# median of one run (a third cold run after start) logged 'stall: 14.9x' and its end.
STALL_MIN_RUNS = 3
HEALTH_WINDOW_S = 2.0
# Runs of each stage after start() that health does not judge: the first runs on real
# frames are cold (5-20x on this CPU after the zero-input warm-up), not a stalled device.
COLD_RUNS = 2
# Failing runs in a row (raised, or any non-finite exit output) after which a stage, and
# every stage after it, is no longer run by this executor (until a new one is configured).
FAIL_LIMIT = 3
# Deadline guard (anytime policies): stage runs end later than planned by what the plan
# cannot see (the worker preempted or waiting for the GIL mid-stage on a busy machine).
# The executor measures that overrun per run (actual end - planned end) and plans every
# new frame to a deadline earlier by its GUARD_QUANTILE over the last GUARD_WINDOW_S (at
# most the last 4000 runs; once GUARD_MIN_RUNS were measured), at most GUARD_MAX_SHARE of
# the frame's relative deadline; the frame is judged on time or late against its own.
GUARD_QUANTILE = 99.0
GUARD_WINDOW_S = 10.0
GUARD_MIN_RUNS = 20
GUARD_MAX_SHARE = 0.5
# How decisions are made for a contingent policy (imprecise_dp, imprecise_dp_flat):
# ``thread`` plans off the critical path (a planner thread, while a stage runs; the
# worker looks the plan up at the boundary), ``inline`` runs the DP at the boundary,
# ``auto`` picks one from measured costs (``planner.choose_planner``).
PLANNER_MODES = ('auto', 'thread', 'inline')
# Exit outputs of at most this many values are post-processed in plain Python (``_exit``).
EXIT_PY_MAX = 256
# Batch sizes ``warm_up`` runs every stage at: up to the DP's largest batch (``max_batch``).
WARM_BATCH = 8
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


@dataclass
class ExecutorHealth:
    """
    What the executor knows of its own state, for ``/diagnostics``.

    ``slowdown``: the largest, over stages, of the recent measured stage time divided by
    the profile's calibrated median (1.0 when nothing was measured recently);
    ``stalled``: slowdown above ``STALL_FACTOR``; ``stage_failures``: per stage, the runs
    that raised or gave a non-finite output; ``max_depth``: the deepest stage the executor
    still runs (below ``num_stages`` once a stage was disabled); ``message``: '' when
    healthy, else what is wrong. ``overhead_ms_p50``/``_p99``, ``overhead_share`` and
    its parts (``admit_share``, ``decide_share``, ``dispatch_share``, ``exit_share``,
    ``publish_share``), ``planner``, ``plan_lookups``, ``plan_fallbacks``: see
    ``Executor.stats``; ``late_causes``, ``late_stage_start_ms_p50`` (``stage_start_ms``
    p50), ``wake_late_ms_p99`` and ``deadline_guard_ms`` (``guard_ms``): see
    ``Executor.lateness``.
    """

    slowdown: float
    stalled: bool
    stage_failures: Dict[int, int]
    max_depth: int
    num_stages: int
    message: str
    stage_slowdown: Dict[int, float] = field(default_factory=dict)
    overhead_ms_p50: float = 0.0
    overhead_share: float = 0.0
    overhead_ms_p99: float = 0.0
    admit_share: float = 0.0
    decide_share: float = 0.0
    dispatch_share: float = 0.0
    exit_share: float = 0.0
    publish_share: float = 0.0
    planner: str = 'inline'
    plan_lookups: int = 0
    plan_fallbacks: int = 0
    late_causes: Dict[str, int] = field(default_factory=dict)
    late_stage_start_ms_p50: float = 0.0
    wake_late_ms_p99: float = 0.0
    deadline_guard_ms: float = 0.0

    @property
    def ok(self) -> bool:
        """Nothing to report."""
        return not self.message


def pick_device(requested: str = 'auto') -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU."""
    if requested in ('', 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    dev = torch.device(requested)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {requested!r} requested but CUDA is not available')
    return dev


def truncate_profile(profile: ModelProfile, depth: int) -> ModelProfile:
    """Return the profile of the model's first ``depth`` stages (plans that stop there)."""
    return ModelProfile(profile.name, depth, profile.latency[:depth],
                        profile.exit_accuracy[:depth], profile.conf_edges[:depth],
                        [per_k[:depth] for per_k in profile.cond_accuracy[:depth]],
                        profile.device)


def upper_quantile(values: List[float], q: float) -> float:
    """
    Return numpy's (linear) percentile ``q`` of ``values``, for q near 100.

    Only the values above it are sorted (``heapq.nlargest``): the guard's p99 over up to
    4000 runs took np.percentile ~1 ms per refresh on the worker.
    """
    n = len(values)
    pos = q / 100.0 * (n - 1)
    lo = int(pos)
    top = heapq.nlargest(n - lo, values)       # top[-1] is the lo-th smallest
    low = top[-1]
    if lo + 1 >= n:
        return float(low)
    return float(low + (top[-2] - low) * (pos - lo))


class StageTimer:
    """Times one stage run: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'
        self.seconds = 0.0
        self.cpu_seconds = 0.0      # this thread's CPU time in the stage (overhead figures)

    def __enter__(self) -> 'StageTimer':
        self._c0 = time.thread_time()
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
        self.cpu_seconds = time.thread_time() - self._c0


class _Frame:
    """A frame in flight: its tasks still open, the results and drop reasons so far."""

    __slots__ = ('job', 'open', 'results', 'reasons', 'late', 'rois')

    def __init__(self, job: FrameJob, tids: List[int], rois: List[tuple]) -> None:
        self.job = job
        self.open = set(tids)
        self.results: List[CropResult] = []
        self.reasons: List[str] = []
        self.late = False
        self.rois = rois


class Executor:
    """The worker: owns the device, the tasks' states and the policy."""

    def __init__(self, net, card: Dict, profile: ModelProfile, temperatures: Sequence[float],
                 on_outcome: Callable[[FrameOutcome], None], policy: str = 'imprecise_dp',
                 depth: Optional[int] = None, device: str = 'auto', max_pending: int = 64,
                 clock: Callable[[], float] = time.monotonic, percentile: int = 95,
                 batching: bool = True, publish_margin: float = 0.002,
                 planner: str = 'auto') -> None:
        if planner not in PLANNER_MODES:
            raise ValueError(f'planner must be one of {PLANNER_MODES}, not {planner!r}')
        self.device = pick_device(device)
        self.net = net.to(self.device).eval()
        self.card = card
        self.classes = list(card['classes'])
        self.pre = Preprocess(**card['preprocess'])
        self.profile = profile
        self.num_stages = profile.num_stages
        self.temps = torch.tensor(list(temperatures), dtype=torch.float32)
        self._temps_np = np.asarray(list(temperatures), dtype=np.float32)
        # Input normalisation folded into one multiply-add (x / 255 - mean) / std.
        std = np.asarray(self.pre.std, dtype=np.float32)
        self._in_scale = (1.0 / (255.0 * std)).astype(np.float32)
        self._in_offset = (-np.asarray(self.pre.mean, dtype=np.float32) / std).astype(
            np.float32)
        # The same as a table per channel: uint8 value -> normalised float (one indexing
        # op per batch of crops instead of a conversion, a multiply and an add).
        self._in_lut = (np.arange(256, dtype=np.float32)[:, None] * self._in_scale
                        + self._in_offset).astype(np.float32)
        self._cpu = self.device.type == 'cpu'
        self._net_stages = self.net.num_stages
        self.times = StageTimes(profile, percentile=percentile)
        self._batching = batching
        self._plan_profile = profile          # truncated once a stage is disabled
        self.max_depth = profile.num_stages   # the deepest stage still run
        self.policy: Policy = make_policy(policy, profile, depth=depth, times=self.times,
                                          batching=batching)
        if self.policy.simulation_only:
            raise ValueError(f'policy {policy!r} is for simulation only (it needs ground truth)')
        self._policy_args: Tuple[str, Optional[int]] = (policy, depth)
        self.planner_requested = planner
        self._auto_choice: Optional[Tuple[str, float]] = None
        self._link: Optional[Union[OffPathPlanner, InlineLink]] = None   # the worker's end
        self._ended: List[int] = []                    # the tasks of the stage just run
        self._planner: Optional[threading.Thread] = None
        self.planner_s: Deque[float] = deque(maxlen=4000)   # planner thread, per plan
        # Boundary counts of the links replaced (a policy switch makes a new one).
        self._lookups: Dict[str, int] = {}
        self.on_outcome = on_outcome
        self.max_pending = max_pending
        self.publish_margin = publish_margin
        self.clock = clock
        self._cond = threading.Condition()
        self._lock = threading.RLock()       # task state: worker, watcher, stop()
        # Frames submitted, not yet admitted: (job, its crops as tensors or None).
        self._inbox: List[Tuple[FrameJob, Optional[torch.Tensor]]] = []
        self._tasks: Dict[int, Task] = {}
        self._state: Dict[int, torch.Tensor] = {}
        self._result: Dict[int, Tuple[int, float]] = {}   # class, confidence (deepest exit)
        # Per task: its frame and its crop's index in the frame (the roi it answers for).
        self._task_frame: Dict[int, Tuple[_Frame, int]] = {}
        self._frames: Dict[int, _Frame] = {}
        self._ids = itertools.count()
        self._frame_ids = itertools.count()
        self._running = False
        self._closed = True       # not taking tasks: before start and after stop
        self._generation = 0      # a worker or watcher of an earlier start() ends itself
        self._thread: Optional[threading.Thread] = None
        self._watcher: Optional[threading.Thread] = None
        # Tasks with a result, by when they fall due: (deadline - margin, task id); lazy
        # deletion (an id no longer pending is skipped). Under ``_lock``.
        self._due: List[Tuple[float, int]] = []
        # Outcome delivery: the worker's and the watcher's outcomes are queued and a
        # delivery thread calls ``on_outcome`` (the node's ROS publish), off the worker's
        # path and outside ``_lock``; stop() delivers what is left before it returns.
        self._outbox: Deque[FrameOutcome] = deque()
        self._out_cond = threading.Condition()
        self._out_waiting = False
        self._delivering = False
        self._deliverer: Optional[threading.Thread] = None
        self._queue_from: frozenset = frozenset()   # thread idents whose outcomes queue
        # Successful stage runs, recorded into the stage-time estimates and health by the
        # delivery thread while the next stage runs (``_record_runs``): on the worker that
        # bookkeeping was ~20 us per stage run at 2x load (cold caches after the stage),
        # 0.016 of its busy time. A run far above its plan, and every failure, are recorded
        # by the worker at once (plans and failure streaks must see them before the next
        # decision). Whoever records holds ``_record_lock`` (one writer of ``times``).
        self._runs: Deque[Tuple[int, int, float, float, float, bool]] = deque()
        self._record_lock = threading.Lock()
        # Per cycle, the worker's time in the exit post-processing and in publishing.
        self._t_exit = 0.0
        self._t_emit = 0.0
        self._worker_ident: Optional[int] = None
        self.decision_s: Deque[float] = deque(maxlen=10000)   # recent, for statistics
        self.stage_s: Deque[float] = deque(maxlen=10000)
        # Health and overhead records (the worker writes, health()/stats() read).
        self._health_lock = threading.Lock()
        n = profile.num_stages
        self._stage_ratio: Dict[int, Deque[Tuple[float, float]]] = {
            k: deque(maxlen=HEALTH_SAMPLES) for k in range(1, n + 1)}
        self._failures: Dict[int, int] = dict.fromkeys(range(1, n + 1), 0)
        self._fail_streak: Dict[int, int] = dict.fromkeys(range(1, n + 1), 0)
        self._last_failure: Dict[int, float] = {}
        self._fail_logged: Dict[int, float] = {}
        self._stall_checked = -1e9
        # Runs per stage after start() that health does not judge and plans do not use
        # (``COLD_RUNS``; the worker's count).
        self._cold: Dict[int, int] = {}
        self._p50: Dict[Tuple[int, int], float] = {}   # calibrated median per (stage, batch)
        self._stall_logged = False
        # Per busy worker cycle: (busy seconds, seconds inside the stage itself) in wall
        # time, the same in the worker thread's CPU time, then the wall time admitting
        # frames, deciding (publishing due results, the policy, drops and finishes), the
        # exit post-processing (softmax, copy back) and publishing outcomes.
        self._cycles: Deque[Tuple[float, ...]] = deque(maxlen=4000)
        # Lateness: tasks published after their deadline, by where they were then
        # (``late_causes``), with (where, stage, seconds late, stage start - deadline) for the
        # recent ones; the watcher's wake-ups after the time it slept until (seconds).
        self._late_causes: Dict[str, int] = {}
        self._late_recent: Deque[Tuple[str, int, float, float]] = deque(maxlen=2000)
        self._wake_late: Deque[float] = deque(maxlen=2000)
        # The check at the start of a stage (``_still_in_time``): tasks it dropped or
        # published; and drops the worker emits after the stage it runs (lock held).
        self._start_checks: Dict[str, int] = {'dropped': 0, 'published': 0}
        self._deferred: List[FrameOutcome] = []
        # Measured overruns (monotonic time, seconds past the planned end) and the guard
        # they give (worker only; see GUARD_QUANTILE).
        self._overrun: Deque[Tuple[float, float]] = deque(maxlen=4000)
        self.guard_s = 0.0
        self._guard_at = -1e9
        self._aged_at = -math.inf         # when the worker last aged the stage times
        self._guard_of: Dict[int, float] = {}   # per task: its deadline = the frame's - this

    # -- public ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (and the deadline watcher of an anytime policy)."""
        with self._lock:
            with self._cond:
                if self._running:
                    return
                self._running = True
                self._closed = False
                self._generation += 1
                gen = self._generation
        with self._out_cond:
            self._delivering = True
        if self._deliverer is None or not self._deliverer.is_alive():
            self._deliverer = threading.Thread(target=self._deliver, daemon=True,
                                               name='anytime_infer_outcomes')
            self._deliverer.start()
        mode = self.planner_mode     # measured once (auto) before any thread starts
        with self._lock:
            self._set_link()
        with self._health_lock:
            # The first stall check 0.5 s after the start, and not on the first runs of a
            # stage (``COLD_RUNS``): it judged a median of one cold run (a stall logged,
            # then cleared, at most starts under load, and in the node, whose frames come
            # long after the start, at its first frames).
            self._stall_checked = time.monotonic()
        # The same first runs are not planned with either: one cold run made every stage
        # plan at up to 34x its calibrated time, and a burst of frames right after a start
        # ran shallow with seconds of slack.
        self._cold = dict.fromkeys(range(1, self.num_stages + 1), COLD_RUNS)
        self._thread = threading.Thread(target=self._loop, args=(gen,),
                                        name='anytime_infer_worker', daemon=True)
        self._thread.start()
        queued = {self._thread.ident}
        self._watcher = None
        if self.policy.anytime:
            self._watcher = threading.Thread(target=self._watch, args=(gen,), daemon=True,
                                             name='anytime_infer_deadlines')
            self._watcher.start()
            queued.add(self._watcher.ident)
        self._queue_from = frozenset(queued)
        self._planner = None
        if mode == 'thread':
            self._planner = threading.Thread(target=self._plan_loop, args=(gen,),
                                             daemon=True, name='anytime_infer_planner')
            self._planner.start()

    @property
    def planner_mode(self) -> str:
        """Return how the policy decides: ``thread`` (off the critical path) or ``inline``."""
        if not getattr(self.policy, 'contingent', False):
            return 'inline'
        if self.planner_requested != 'auto':
            return self.planner_requested
        if self._auto_choice is None:
            # One measurement per executor: an inline DP decision against a mean stage.
            self._auto_choice = choose_planner(self._plan_profile)
        return self._auto_choice[0]

    def submit(self, job: FrameJob) -> bool:
        """
        Queue a frame; a full queue ends it at once as dropped / queue_full.

        On the CPU the crops are normalised to tensors here, in the caller's thread (the
        node's subscription callback), not on the worker's path between two stages: at 2x
        load that conversion was ~40 us of the worker's ~200 us per stage run (cold caches
        after a stage). A frame that fails here is converted again by the worker, which
        drops it with reason ``error`` if it fails there too.
        """
        x = self._prepare(job.inputs) if self._cpu and self._running else None
        with self._cond:
            job.frame_id = next(self._frame_ids)
            accept = self._running and self.pending() < self.max_pending
            if accept:
                self._inbox.append((job, x))
                self._cond.notify()
            reason = QUEUE_FULL if self._running else SHUTDOWN
        if not accept:
            self._emit(FrameOutcome(job, DROPPED, reason, [], self.clock()))
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
        new = self._make_policy(name, depth)
        if new.simulation_only:
            raise ValueError(f'policy {name!r} is for simulation only (it needs ground truth)')
        with self._lock:
            if self._running and new.anytime != self.policy.anytime:
                raise ValueError(
                    f'switching from {self.policy.name} to {name} changes whether results '
                    'are published at their deadline: deactivate first')
            self.policy = new
            self._policy_args = (name, depth)
            if self._running:
                self._set_link()

    def stop(self, timeout: float = 5.0) -> None:
        """
        Stop the worker; publish what has a result, drop the rest as ``shutdown``.

        Never raises: every frame queued or in flight ends in exactly one outcome through
        the callback, also when a KeyboardInterrupt (a second Ctrl-C) arrives meanwhile,
        and a callback that fails is logged. The worker is waited for up to ``timeout``
        seconds (a stage in progress finishes first); one still inside a stage then takes
        no new work and its tasks end here.
        """
        interrupted = False
        end = time.monotonic() + timeout
        for phase in (self._signal_stop, lambda: self._join(end), self._flush_inbox,
                      self._flush_tasks, lambda: self._drain(end)):
            for _ in range(5):      # a phase that was interrupted is repeated (idempotent)
                try:
                    phase()
                    break
                except KeyboardInterrupt:
                    interrupted = True
                except Exception:  # noqa: B902 - stop() must finish whatever went wrong
                    log.exception('stopping the executor')
                    break
        if interrupted:
            log.warning('interrupted while stopping; every pending frame was still answered')

    @torch.inference_mode()
    def warm_up(self, runs: int = 5) -> None:
        """
        Run every stage a few times at batch 1, then once at every batch size it may run.

        Kernel selection, the allocator and code first used at a batch size are paid here,
        not by the first batch of frames: the first pass at batch 2 took 37-49 ms in 2 of
        4 fresh processes (4-6 ms after), 70-900 ms while a CI run loaded this machine,
        when a burst of 8 frames right after start came out late.
        """
        shape = (1, self.pre.channels, self.pre.height, self.pre.width)
        for _ in range(runs):
            x = torch.zeros(shape, device=self.device)
            for k in range(1, self.net.num_stages + 1):
                x, _ = self.net.run_stage(k, x)
        for b in range(2, self.warm_batch + 1):
            x = torch.zeros((b,) + shape[1:], device=self.device)
            for k in range(1, self.net.num_stages + 1):
                x, _ = self.net.run_stage(k, x)
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    @property
    def warm_batch(self) -> int:
        """Return the largest batch a stage may run at (1 without batching)."""
        return WARM_BATCH if self._batching else 1

    def stats(self) -> Dict[str, float]:
        """
        Return the worker's own overhead: its busy time not spent inside a stage.

        A busy cycle of the worker is everything from taking new frames to the end of the
        outcomes of the stage it ran: admitting frames, the decision, batching inputs,
        the exit softmax and copy back, and the outcome callbacks (publishing); idle
        waits are not counted. ``overhead_ms_p50``/``_p99``: per cycle that ran a stage,
        busy time minus the stage's own time; ``overhead_share``: all overhead over all
        busy time, over the last 4000 cycles. Wall time, so on a busy machine it includes
        the worker's time preempted or waiting for the GIL; ``overhead_cpu_share`` is the
        same share in the worker thread's CPU time (what the worker itself spends).
        Where the overhead goes, as shares of busy wall time: ``admit_share`` (frames to
        tensors), ``decide_share`` (results due, the decision: the policy inline, a plan
        lookup in thread mode; drops and finishes), ``exit_share`` (the exit's softmax and
        copy back), ``publish_share`` (handing outcomes over: queued for the delivery
        thread while running) and ``dispatch_share`` (the rest: locks, batching, the check
        at the stage start, bookkeeping after it). ``planner``: ``thread`` or ``inline``;
        thread mode counts its boundaries: ``plan_lookups`` (decided from a plan),
        ``plan_fallbacks`` (no plan covered the front, or a guard failed: the cheap safe
        action), ``plan_mandatory`` (the front's mandatory stage: no plan needed),
        ``plans`` (plans adopted) and ``planner_ms_p50`` (the planner thread, per plan).
        """
        with self._health_lock:
            cycles = list(self._cycles)
        per_stage = [c[0] - c[1] for c in cycles if c[1] > 0]
        col = list(zip(*cycles)) if cycles else [()] * 8
        busy, inside, busy_cpu, inside_cpu, admit, decide, ex, emit = (
            float(sum(c)) for c in col)
        dec = list(self.decision_s)[-4000:]
        plans = list(self.planner_s)
        counts = dict(self._lookups)
        link = self._link
        if link is not None:
            for key, n in vars(link.stats).items():
                if isinstance(n, int):
                    counts[key] = counts.get(key, 0) + n

        def share(x: float) -> float:
            return x / busy if busy > 0 else 0.0
        return {
            'overhead_ms_p50': 1000 * float(np.median(per_stage)) if per_stage else 0.0,
            'overhead_ms_p99': 1000 * float(np.percentile(per_stage, 99)) if per_stage
            else 0.0,
            'overhead_share': share(busy - inside),
            'admit_share': share(admit),
            'decide_share': share(decide),
            'exit_share': share(ex),
            'publish_share': share(emit),
            'dispatch_share': share(busy - inside - admit - decide - ex - emit),
            'overhead_cpu_share': (busy_cpu - inside_cpu) / busy_cpu if busy_cpu > 0 else 0.0,
            'decision_ms_p50': 1000 * float(np.median(dec)) if dec else 0.0,
            'busy_cycles': float(len(cycles)),
            'planner': self.planner_mode,
            'plan_lookups': counts.get('exact', 0) + counts.get('stale', 0),
            'plan_fallbacks': counts.get('fallback', 0),
            'plan_mandatory': counts.get('mandatory', 0),
            'plans': counts.get('plans', 0),
            'planner_ms_p50': 1000 * float(np.median(plans)) if plans else 0.0,
        }

    def lateness(self) -> Dict[str, Any]:
        """
        Return where late tasks were when they were published, and the watcher's wake-ups.

        ``late_causes``: tasks published after their deadline, by who published them:
        ``watcher`` (the deadline watcher, woken too late), ``worker`` (the worker's check
        of due results between two stages), ``stage`` (at the end of a stage that ended
        past the deadline), ``decide`` (the policy chose to finish it), ``failed``,
        ``stop``. ``start_check``: tasks the check at the start of a stage dropped as
        infeasible or published early (see ``_still_in_time``; never late). ``late_ms``:
        p50/p99/max of how late, per cause, over the recent ones;
        ``stage_start_ms``: for ``stage``, p50/p99 of when that stage started, relative to
        the deadline (negative: before it); ``late_stage``: the stage done when published,
        counts. ``wake_late_ms_p50``/``_p99``/``_max``: how long after its target the
        watcher woke (recent wake-ups). ``guard_ms``: the deadline guard new frames are
        planned with now (see ``GUARD_QUANTILE``).
        """
        with self._lock:
            causes = dict(self._late_causes)
            recent = list(self._late_recent)
            wake = list(self._wake_late)
            checks = dict(self._start_checks)
        out: Dict[str, Any] = {'late_causes': causes, 'start_check': checks,
                               'guard_ms': 1000 * self.guard_s}

        def pct(values: List[float]) -> Dict[str, float]:
            if not values:
                return {}
            v = np.asarray(values) * 1000.0
            return {'p50': float(np.median(v)), 'p99': float(np.percentile(v, 99)),
                    'max': float(v.max())}
        out['late_ms'] = {w: pct([r[2] for r in recent if r[0] == w]) for w in causes}
        out['stage_start_ms'] = pct([r[3] for r in recent if r[0] == 'stage'])
        stages: Dict[int, int] = {}
        for r in recent:
            stages[r[1]] = stages.get(r[1], 0) + 1
        out['late_stage'] = stages
        w = pct(wake)
        for key in ('p50', 'p99', 'max'):
            out[f'wake_late_ms_{key}'] = w.get(key, 0.0)
        return out

    def health(self) -> ExecutorHealth:
        """Slowdown, stall, stage failures, the depth still run; see ``ExecutorHealth``."""
        self._record_queued()
        now = time.monotonic()
        with self._health_lock:
            per = self._slowdowns(now)
            failures = dict(self._failures)
            recent_fail = sorted(k for k, t in self._last_failure.items()
                                 if now - t <= HEALTH_WINDOW_S)
        slowdown = max(per.values(), default=1.0)
        stalled = slowdown > STALL_FACTOR
        msgs = []
        if stalled:
            worst = max(per, key=per.get)
            msgs.append(f'stall: stage {worst} takes {slowdown:.1f}x its calibrated time '
                        f'(threshold {STALL_FACTOR:g}x)')
        n, k = self.num_stages, self.max_depth
        if k < n:
            what = 'every stage' if k == 0 else f'stages {k + 1}..{n}'
            msgs.append(f'{what} disabled after {FAIL_LIMIT} failing runs in a row (stage '
                        f'{k + 1}); configure again to retry')
        if recent_fail:
            msgs.append('stage failures (raised or non-finite output): ' + ', '.join(
                f'stage {s}: {failures[s]}' for s in recent_fail))
        st = self.stats()
        late = self.lateness()
        return ExecutorHealth(
            slowdown, stalled, failures, k, n, '; '.join(msgs), per,
            overhead_ms_p50=st['overhead_ms_p50'], overhead_share=st['overhead_share'],
            overhead_ms_p99=st['overhead_ms_p99'], admit_share=st['admit_share'],
            decide_share=st['decide_share'], dispatch_share=st['dispatch_share'],
            exit_share=st['exit_share'], publish_share=st['publish_share'],
            planner=st['planner'], plan_lookups=st['plan_lookups'],
            plan_fallbacks=st['plan_fallbacks'], late_causes=late['late_causes'],
            late_stage_start_ms_p50=late['stage_start_ms'].get('p50', 0.0),
            wake_late_ms_p99=late['wake_late_ms_p99'], deadline_guard_ms=late['guard_ms'])

    def _slowdowns(self, now: float) -> Dict[int, float]:
        """
        Per stage measured recently: median measured / calibrated time (health lock held).

        Only stages with ``STALL_MIN_RUNS`` runs within ``HEALTH_WINDOW_S``.
        """
        per = {}
        for k, q in self._stage_ratio.items():
            fresh = [r for t, r in q if now - t <= HEALTH_WINDOW_S]
            if len(fresh) >= STALL_MIN_RUNS:
                per[k] = float(np.median(fresh))
        return per

    def _log_stall(self, now: float) -> None:
        """
        Log a stall when it starts and when it ends (health lock held; every 0.5 s at most).

        It ends below 0.6 x ``STALL_FACTOR`` (hysteresis: a busy machine near the factor
        would log every few seconds).
        """
        if now - self._stall_checked < 0.5:
            return
        self._stall_checked = now
        per = self._slowdowns(now)
        worst = max(per, key=per.get, default=0)
        slowdown = per.get(worst, 1.0)
        if not self._stall_logged and slowdown > STALL_FACTOR:
            self._stall_logged = True
            log.warning('stall: stage %d takes %.1fx its calibrated time (threshold %gx); '
                        'plans follow the measured times', worst, slowdown, STALL_FACTOR)
        elif self._stall_logged and slowdown < 0.6 * STALL_FACTOR:
            self._stall_logged = False
            log.warning('stall over: stage times within %.1fx of calibration', slowdown)

    # -- stopping -------------------------------------------------------------------------
    def _signal_stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()

    def _join(self, end: float) -> None:
        """Wait for the worker and the watcher until ``end`` (short joins: interruptible)."""
        for th in (self._thread, self._watcher, self._planner):
            while th is not None and th.is_alive() and time.monotonic() < end:
                th.join(0.05)
        if self._thread is not None and self._thread.is_alive():
            log.warning('worker still inside a stage after the stop timeout; its tasks end '
                        'now as shutdown')
        self._thread = self._watcher = self._planner = None

    def _drain(self, end: float) -> None:
        """Stop the delivery thread and deliver every outcome still queued, here."""
        with self._out_cond:
            self._delivering = False
            self._out_cond.notify_all()
        th = self._deliverer
        while th is not None and th.is_alive() and time.monotonic() < end + 1.0:
            th.join(0.05)
        self._deliverer = None
        # Whatever is left (a callback that hung, or the thread gone): each popped once.
        self._flush_outbox()
        self._record_queued()

    def _flush_inbox(self) -> None:
        """Queued frames not yet taken by the worker end as ``shutdown``, one by one."""
        while True:
            with self._cond:
                if not self._inbox:
                    return
                job = self._inbox.pop(0)[0]
            self._emit(FrameOutcome(job, DROPPED, SHUTDOWN, [], self.clock()))

    def _flush_tasks(self) -> None:
        """Tasks in flight: publish those with a result, drop the others as ``shutdown``."""
        with self._lock:
            self._closed = True       # a worker still in a stage admits nothing more
            now = self.clock()
            for tid, task in list(self._tasks.items()):
                if tid not in self._tasks:
                    continue
                if task.stages_done >= 1 and tid in self._result:
                    self._finish(tid, now, 'stop')
                else:
                    self._drop(tid, SHUTDOWN, now)
            # A frame whose last task was closed when an interrupt cut this phase short.
            for frame in list(self._frames.values()):
                frame.open &= self._tasks.keys()
                if not frame.open:
                    frame.reasons.append(SHUTDOWN)
                    self._emit_frame(frame, now)
        self._emit_deferred()     # a worker still inside a stage has not emitted them

    # -- worker ---------------------------------------------------------------------------
    def _make_policy(self, name: str, depth: Optional[int]) -> Policy:
        """Build a policy that plans on the stages still run (``max_depth``)."""
        if depth is not None and self.max_depth >= 1:
            depth = min(depth, self.max_depth)
        return make_policy(name, self._plan_profile, depth=depth, times=self.times,
                           batching=self._batching)

    def _set_link(self) -> None:
        """
        Make the worker's end of a new planner link for the policy (lock held).

        In thread mode an ``OffPathPlanner`` (a contingent policy only); inline, for the
        compiled DP, an ``InlineLink`` that keeps the tasks as arrays. The tasks in flight
        are posted to it as arrivals (with their progress). The counts of the link it
        replaces are kept for ``stats``.
        """
        old = self._link
        if old is not None:
            for key, n in vars(old.stats).items():
                if isinstance(n, int):
                    self._lookups[key] = self._lookups.get(key, 0) + n
        self._link = None
        if self.planner_mode == 'thread':
            link = OffPathPlanner(self.policy)
        elif decides_on_slots(self.policy):
            # Inline with the compiled DP: the link keeps the pending tasks as arrays, so a
            # decision does not read every task (~40 at 2x) at every boundary.
            link = InlineLink(self.policy)
        else:
            return
        for task in sorted(self._tasks.values(), key=lambda t: (t.deadline, t.task_id)):
            link.arrived(task)
        self._link = link

    def _plan_loop(self, gen: int) -> None:
        """
        Plan from each stage start while that stage runs (the planner thread).

        It sees the worker's tasks only through the link's events (see
        ``scheduler.planner``); torch releases the GIL inside a stage's kernels, so on a
        machine with a second core the plan is often ready when the stage ends.
        """
        while self._running and gen == self._generation:
            link = self._link
            if link is None:
                time.sleep(0.05)
                continue
            seq = link.wait_for_stage(0.05)
            if seq is None or link is not self._link:
                continue
            try:
                plan = link.plan(seq)
            except Exception:  # noqa: B902 - a failed plan leaves the safe action
                log.exception('planner failed; the worker takes the safe action')
                time.sleep(0.01)
                continue
            if plan is not None:
                self.planner_s.append(plan.planner_s)

    def _inputs(self, jobs: List[FrameJob]) -> List[Optional[torch.Tensor]]:
        """
        Convert the jobs' crops to normalised device tensors (None for a job that fails).

        Jobs whose crops have the same shape are converted together (one conversion and
        one copy instead of one per frame: at hundreds of frames per second the
        per-frame conversion was the larger part of the worker's overhead); a group that
        fails is converted again frame by frame so that only a bad frame fails.
        """
        if len(jobs) == 1 and isinstance(jobs[0].inputs, np.ndarray):
            try:        # the common case at a boundary: one new frame
                return [self._to_tensor(jobs[0].inputs)]
            except Exception:  # noqa: B902 - converted again below (and logged)
                pass
        out: List[Optional[torch.Tensor]] = [None] * len(jobs)
        groups: Dict[tuple, List[int]] = {}
        for i, job in enumerate(jobs):
            a = job.inputs
            key = (a.shape[1:], a.dtype.str) if isinstance(a, np.ndarray) else (i,)
            groups.setdefault(key, []).append(i)
        for idx in groups.values():
            try:
                arrays = [jobs[i].inputs for i in idx]
                x = self._to_tensor(arrays[0] if len(idx) == 1 else np.concatenate(arrays))
                # One split, not a slice per frame (torch's indexing is costly per call).
                parts = x.split([len(a) for a in arrays]) if len(idx) > 1 else (x,)
                for i, part in zip(idx, parts):
                    out[i] = part
                continue
            except Exception:  # noqa: B902 - retried frame by frame below
                pass
            for i in idx:
                try:
                    out[i] = to_tensor_batch(jobs[i].inputs, self.pre).to(self.device)
                except Exception as e:  # noqa: B902 - a bad job ends as an error
                    log.error('cannot prepare frame %d: %s', jobs[i].frame_id, e)
        return out

    def _prepare(self, images: Any) -> Optional[torch.Tensor]:
        """Return uint8 (N, H, W, C) crops as tensors (``_to_tensor``), None if they fail."""
        if not isinstance(images, np.ndarray) or images.ndim != 4 or not len(images):
            return None
        try:
            return self._to_tensor(images)
        except Exception:  # noqa: B902 - the worker converts it again (and drops it)
            return None

    def _to_tensor(self, images: np.ndarray) -> torch.Tensor:
        """
        Return uint8 (N, H, W, C) crops as normalised (N, C, H, W) tensors on the device.

        On the CPU one lookup in a table of the 256 normalised values per channel (one
        numpy op; conversion, multiply and add were ~65 us per frame on the worker at 2x,
        cold caches); on a GPU the uint8 crops are copied and normalised there.
        """
        if self.device.type != 'cpu' or images.dtype != np.uint8:
            return to_tensor_batch(images, self.pre).to(self.device, non_blocking=True)
        if images.ndim == 4 and images.shape[3] == 1:
            x = self._in_lut[images[..., 0], 0][:, None]     # (N, 1, H, W), contiguous
        else:
            x = self._in_lut[images, np.arange(self._in_lut.shape[1])]
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return torch.from_numpy(x)

    def _admit(self, queued: List[Tuple[FrameJob, Optional[torch.Tensor]]]) -> None:
        """Make tasks of the frames taken from the inbox (with their tensors, if made)."""
        if self._closed or self.max_depth == 0:
            reason = SHUTDOWN if self._closed else ERROR
            for job, _ in queued:
                self._emit(FrameOutcome(job, DROPPED, reason, [], self.clock()))
            return
        jobs = [job for job, _ in queued]
        tensors = [x for _, x in queued]
        if any(x is None for x in tensors):   # not converted at submit (GPU, or failed)
            todo = [i for i, x in enumerate(tensors) if x is None]
            for i, x in zip(todo, self._inputs([jobs[i] for i in todo])):
                tensors[i] = x
        for job, x in zip(jobs, tensors):
            if x is None or len(x) == 0:
                self._emit(FrameOutcome(job, DROPPED, ERROR, [], self.clock()))
                continue
            rois = job.rois or [(0, 0, 0, 0)] * len(job.inputs)
            # Planned to a deadline earlier by the measured overrun (judged on its own).
            guard = min(self.guard_s, GUARD_MAX_SHARE * max(job.deadline - job.arrival, 0.0)) \
                if self.policy.anytime else 0.0
            link = self._link
            rows = x.split(1) if len(x) > 1 else (x,)
            frame = _Frame(job, [], rois)
            for i in range(len(job.inputs)):
                tid = next(self._ids)
                self._tasks[tid] = task = Task(tid, job.stream, job.arrival,
                                               job.deadline - guard, self.max_depth,
                                               job.weight, stamp=job.stamp)
                if link is not None:
                    link.arrived(task)
                if guard:
                    self._guard_of[tid] = guard
                self._state[tid] = rows[i]
                self._task_frame[tid] = (frame, i)
                frame.open.add(tid)
            self._frames[job.frame_id] = frame

    def _take_jobs(self, gen: int
                   ) -> Optional[List[Tuple[FrameJob, Optional[torch.Tensor]]]]:
        """Take the new frames (maybe none); wait a while when there is nothing to do."""
        if not self._inbox and self._tasks and self._running and gen == self._generation:
            return []       # between two stages, nothing new: no lock taken
        with self._cond:
            if not self._running or gen != self._generation:
                return None
            if not self._inbox and not self._tasks:
                self.policy.note_idle(self.clock())     # out of work: its slack was real
                self._wake_delivery()     # the last cycle's outcomes (see ``_work``)
                self._cond.wait(0.1)
                if not self._running or gen != self._generation:
                    return None
            jobs, self._inbox = self._inbox, []
        return jobs

    def _loop(self, gen: int) -> None:
        """
        One busy cycle per stage boundary: admit, decide, run the stage, its outcomes.

        The phases are apart so that a planner thread runs beside the stage: only
        ``_decide`` decides (a plan lookup in thread mode), only ``_run_stage`` touches
        the device. Each phase is timed for ``stats`` (outcomes published in a phase are
        counted as publishing, not as that phase).
        """
        self._worker_ident = threading.get_ident()
        # Entered once for the whole loop (per stage run it cost a few microseconds).
        with torch.inference_mode():
            self._work(gen)

    def _work(self, gen: int) -> None:
        """Run the worker's cycles (see ``_loop``)."""
        while True:
            jobs = self._take_jobs(gen)
            if jobs is None:
                return
            t0, c0 = time.perf_counter(), time.thread_time()
            inside, inside_cpu, wait, run = 0.0, 0.0, None, None
            t_admit = t_decide = t0
            self._t_exit = self._t_emit = 0.0
            e_admit = e_decide = 0.0
            worked = bool(jobs or self._tasks)
            try:
                if jobs:
                    with self._lock:
                        self._admit(jobs)
                t_admit = t_decide = time.perf_counter()
                e_admit = e_decide = self._t_emit
                if self._tasks:
                    run, wait = self._decide()
                    t_decide = time.perf_counter()
                    e_decide = self._t_emit
                    if run:
                        inside, inside_cpu = self._run_stage(run)
            except Exception:  # noqa: B902 - the worker must go on; the tasks end as errors
                log.exception('scheduler step failed; dropping the tasks in flight')
                with self._lock:
                    now = self.clock()
                    for tid in list(self._tasks):
                        self._drop(tid, ERROR, now)
            finally:
                self._emit_deferred()
                # The outcomes of a stage go out with the next stage (``_run_stage``
                # wakes the delivery thread once per cycle: a wake-up here too cost ~7 us
                # per cycle), or here when no stage ran, or before waiting.
                if wait is not None or not inside:
                    self._wake_delivery()
            if worked:
                with self._health_lock:
                    self._cycles.append((time.perf_counter() - t0, inside,
                                         time.thread_time() - c0, inside_cpu,
                                         t_admit - t0 - e_admit,
                                         t_decide - t_admit - (e_decide - e_admit),
                                         self._t_exit, self._t_emit))
            if wait is not None:
                self._idle(wait)

    def _decide(self) -> Tuple[List[int], Optional[float]]:
        """
        Age the estimates, publish what is due, ask the policy; apply drops and finishes.

        Returns the tasks to run now (one batch), and when there are none and nothing
        else was done, how long to idle (s) before deciding again.
        """
        with self._lock:
            mono = time.monotonic()
            # ``age`` does its work at most every memory_s / 50 and the worker is its only
            # caller: the same gate here saves the call at most boundaries.
            if mono - self._aged_at >= self.times.memory_s / 50:
                self._aged_at = mono
                with self._record_lock:
                    self.times.age(mono)
            now = self.clock()
            if self.policy.anytime:
                self._publish_due(now, 'worker')
            t0 = time.perf_counter()
            link = self._link
            if link is not None:
                # Thread mode: a lookup in the plan made while the last stage ran.
                dec = link.decide(now, self._tasks, self._ended)
            else:
                dec = self.policy.decide(now, list(self._tasks.values()))
            self._ended = []
            self.decision_s.append(time.perf_counter() - t0)
            now = self.clock()
            for tid, reason in dec.drop:
                if tid in self._tasks:
                    self._drop(tid, reason, now, defer=True)
            for tid in dec.finish:
                if tid in self._tasks:
                    self._finish(tid, now, 'decide')
            if link is not None:
                # What the boundary cost the worker: plans leave room for it.
                link.boundary_time(time.perf_counter() - t0)
            run = [t for t in dec.run if t in self._tasks]
            if run or dec.drop or dec.finish:
                return run, None
            # Idle until the next arrival or the earliest deadline.
            return [], min((t.deadline for t in self._tasks.values()),
                           default=now + 0.1) - now

    def _idle(self, wait: float) -> None:
        with self._cond:
            if not self._inbox and self._running:
                self._cond.wait(min(max(wait, 0.0005), 0.1))

    def _publish_due(self, now: float, where: str) -> float:
        """
        Publish results due within the margin at their depth; return the next due time.

        A result goes out ``publish_margin`` before its deadline (thread wake-up jitter
        would otherwise make it late by a fraction of a millisecond).
        """
        heap, tasks = self._due, self._tasks
        while heap:
            due, tid = heap[0]
            if tid not in tasks:
                heapq.heappop(heap)        # published or dropped meanwhile
            elif due <= now:
                heapq.heappop(heap)
                self._finish(tid, now, where)
            else:
                return due
        return float('inf')

    def _watch(self, gen: int) -> None:
        """
        Publish results when they fall due, whatever stage is running (the anytime promise).

        Without this watcher a result would go out only after the running stage ends.
        """
        target = None
        while self._running and gen == self._generation:
            with self._lock:
                now = self.clock()
                if target is not None:
                    self._wake_late.append(now - target)
                nxt = self._publish_due(now, 'watcher')
            self._wake_delivery()
            pause = min(max(nxt - now, 0.0002), 0.005)
            target = now + pause if nxt - now <= 0.005 else None
            time.sleep(pause)

    def _run_stage(self, tids: List[int]) -> Tuple[float, float]:
        """
        Run one stage on a batch of tasks; return the seconds inside it (wall, CPU).

        Called by the worker only, inside its ``torch.inference_mode``.
        """
        with self._lock:
            tasks = self._tasks
            tids = [t for t in tids if t in tasks]   # the watcher may have published
            if not tids:
                return 0.0, 0.0
            stage = tasks[tids[0]].stages_done + 1
            if stage > self.max_depth:      # disabled since the decision
                now = self.clock()
                for t in tids:
                    self._end_failed(t, now)
                return 0.0, 0.0
            if len(tids) > 1:
                shape = self._state[tids[0]].shape
                tids = [t for t in tids if self._state[t].shape == shape]   # like with like
            planned_end = None
            if self.policy.anytime:
                tids, planned_end = self._still_in_time(stage, tids)
                if not tids:
                    return 0.0, 0.0
            inputs = [self._state[t] for t in tids]
            started = self.clock()
            link = self._link
            if link is not None:
                link.stage_start(started, tids, stage)   # the planner plans meanwhile
        t0 = time.perf_counter()
        cold = self._cold.get(stage, 0) > 0     # one of the first runs after start()
        if cold:
            self._cold[stage] -= 1
        if self._cpu:
            # Timed inline on the CPU (a StageTimer per run cost a few microseconds).
            timer = None
            seconds = cpu_seconds = 0.0
        else:
            timer = StageTimer(self.device)
        try:
            x = torch.cat(inputs) if len(inputs) > 1 else inputs[0]
            # Outcomes so far go out while the stage runs: torch releases the GIL in its
            # kernels and the other core delivers them. Woken after the batch is made, not
            # before: the woken thread took the GIL at torch.cat's release and the worker
            # waited for it there (16 us per stage run at 2x, counted as overhead).
            self._wake_delivery()
            if timer is None:
                c0 = time.thread_time()
                s0 = time.perf_counter()
                try:
                    state, logits = self.net.run_stage(stage, x)
                finally:
                    t_exit = time.perf_counter()
                    seconds = t_exit - s0
                    cpu_seconds = time.thread_time() - c0
            else:
                with timer:
                    state, logits = self.net.run_stage(stage, x)
                seconds, cpu_seconds = timer.seconds, timer.cpu_seconds
                t_exit = time.perf_counter()
            conf, pred, finite = self._exit(logits, stage)
            end = time.perf_counter()
            self._t_exit += end - t_exit
            # The scheduler plans with what a stage costs the worker end to end (batching,
            # exit softmax, copy back); the stage itself is timed apart (CUDA events).
            dispatch = end - t0
            if planned_end is not None and not cold:
                self._note_overrun(self.clock() - planned_end)
        except Exception as e:  # noqa: B902 - a failing stage ends its tasks, not the node
            if timer is not None:
                seconds, cpu_seconds = timer.seconds, timer.cpu_seconds
            if isinstance(e, torch.cuda.OutOfMemoryError) and self.device.type == 'cuda':
                torch.cuda.empty_cache()
            self._record_now(stage, len(tids), 0.0, seconds, None, cold, error=e)
            with self._lock:
                now = self.clock()
                for t in tids:
                    if t in self._tasks:
                        self._end_failed(t, now)
            return seconds or (time.perf_counter() - t0), cpu_seconds
        self.stage_s.append(seconds)
        n = len(tids)
        mono = time.monotonic()
        planned = max(dispatch, seconds)
        bad = n - sum(finite) if n > 1 else (0 if finite[0] else 1)
        if bad:
            self._record_now(stage, n, planned, seconds, mono, cold,
                             error=f'non-finite output for {bad} of {n} input(s)')
        elif not cold and planned > SURGE * self.times.plan(stage, n):
            # A stall starting: planned for before the next decision.
            self._record_now(stage, n, planned, seconds, mono, False)
        else:
            self._runs.append((stage, n, planned, seconds, mono, cold))
        with self._lock:
            link = self._link
            ended = self._ended = []
            rows = state.split(1) if n > 1 else (state,)
            tasks, margin = self._tasks, self.publish_margin
            for i, tid in enumerate(tids):
                task = tasks.get(tid)
                if task is None:      # published at its deadline while the stage ran
                    continue
                if not finite[i]:     # never published: answer from the exit before
                    self._end_failed(tid, self.clock())
                    continue
                task.stages_done = stage
                c = float(conf[i])
                task.confidences.append(c)
                if link is not None:
                    link.stage_done(tid, stage, c)
                    ended.append(tid)
                if stage == 1:
                    heapq.heappush(self._due, (task.deadline - margin, tid))
                self._state[tid] = rows[i]
                # Class and confidence; the CropResult is made when the task is published
                # (at its depth then: ``stages_done``), not after every stage.
                self._result[tid] = (int(pred[i]), c)
                now = self.clock()
                if task.stages_done >= task.num_stages or now >= task.deadline - margin:
                    # done, or due: publish what it has now
                    self._finish(tid, now, 'stage', started)
        return seconds, cpu_seconds

    def _exit(self, logits: torch.Tensor, stage: int
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        Return an exit's confidence, class and finiteness per input (lists or numpy).

        On the CPU a small output (``EXIT_PY_MAX`` values) is read with one ``tolist`` and
        post-processed in plain Python (``_exit_py``); otherwise one copy back, then the
        tempered softmax's maximum in numpy.
        """
        if self._cpu and logits.numel() <= EXIT_PY_MAX:   # inference tensors: no detach
            return self._exit_py(logits.tolist(), float(self._temps_np[stage - 1]))
        z = logits.detach()
        if z.device.type != 'cpu':
            z = z.cpu()
        z = z.float().numpy() / self._temps_np[stage - 1]
        finite = np.isfinite(z).all(axis=1)
        pred = z.argmax(axis=1)
        if finite.all():
            # The largest probability: exp(0) over the sum of exp(z - max).
            conf = 1.0 / np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)
        else:
            with np.errstate(all='ignore'):
                conf = 1.0 / np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)
            finite &= np.isfinite(conf)
        return conf, pred, finite

    @staticmethod
    def _exit_py(rows: List[List[float]], temp: float
                 ) -> Tuple[List[float], List[int], List[bool]]:
        """
        ``_exit`` in plain Python on the rows of a small output.

        Measured on the worker at 2x load: numpy's few calls on a (1, 10) output took
        ~90 us (cold caches after the stage's kernels; 11 us in a loop), a Python loop
        over the same values a small part of it.
        """
        inv = 1.0 / temp
        conf, pred, finite = [], [], []
        exp, isfinite = math.exp, math.isfinite
        for row in rows:
            top = max(row)
            ok = isfinite(sum(row))     # any inf or nan makes the sum non-finite
            if ok:
                total = 0.0
                for v in row:
                    total += exp((v - top) * inv)
                c = 1.0 / total
            else:
                c = float('nan')
            pred.append(row.index(top))
            conf.append(c)
            finite.append(ok)
        return conf, pred, finite

    def _still_in_time(self, stage: int, tids: List[int]) -> Tuple[List[int], float]:
        """
        Return the tasks of a batch whose stage still ends in time, and its planned end.

        The policy decided from the clock at its decision; the stage starts later (the
        decision's drops and finishes were published meanwhile, the watcher held the lock,
        the worker waited for the CPU). Its own rule is applied again with the time the
        stage really starts and the planning time of the batch that remains: a task
        without a result whose first stage would end past its deadline is dropped as
        ``infeasible`` (the policy would drop it now); a task with a result whose next
        stage would end past its publish time (deadline - margin) is published now at its
        depth (the watcher would publish it while that stage runs, the stage wasted).
        """
        now = self.clock()
        if len(tids) == 1:      # the common case: one task, in time
            task = self._tasks[tids[0]]
            end = now + self.times.plan(stage, 1)
            if end <= task.deadline - (self.publish_margin if task.stages_done else 0.0):
                return tids, end
        keep = list(tids)
        while keep:
            end = now + self.times.plan(stage, len(keep))
            fits = [t for t in keep if end <= self._tasks[t].deadline - (
                self.publish_margin if self._tasks[t].stages_done else 0.0)]
            if len(fits) == len(keep):
                break
            keep = fits
        for t in tids:
            if t in keep:
                continue
            if self._tasks[t].stages_done == 0:
                self._start_checks['dropped'] += 1
                self._drop(t, INFEASIBLE, now, defer=True)
            else:
                self._start_checks['published'] += 1
                self._finish(t, now, 'start_check')
        return keep, now + self.times.plan(stage, max(len(keep), 1))

    def _note_overrun(self, seconds: float) -> None:
        """Record how much later than planned a stage run ended; renew the guard (5 Hz)."""
        mono = time.monotonic()
        runs = self._overrun
        runs.append((mono, seconds))
        if mono - self._guard_at < 0.2:
            return
        self._guard_at = mono
        while runs and mono - runs[0][0] > GUARD_WINDOW_S:   # in time order: old ones first
            runs.popleft()
        self.guard_s = max(0.0, upper_quantile([x for _, x in runs], GUARD_QUANTILE)) \
            if len(runs) >= GUARD_MIN_RUNS else 0.0

    def _record(self, stage: int, n: int, planned: float, seconds: float,
                mono: Optional[float], cold: bool, error: Any = None) -> None:
        """
        Record one stage run in the estimates and in health (``_record_lock`` held).

        ``planned``: the time to plan with (0: none); ``cold``: one of the first runs after
        start(), neither planned with nor judged; ``error``: why it failed (None: it did not).
        """
        if planned and not cold:
            self.times.observe(stage, n, planned, mono)
        self._stage_ran(stage, n, seconds, failed=error is not None, error=error, mono=mono,
                        cold=cold)

    def _record_now(self, stage: int, n: int, planned: float, seconds: float,
                    mono: Optional[float], cold: bool, error: Any = None) -> None:
        """Record a run at once, after the queued ones (a success before it ends a streak)."""
        with self._record_lock:
            self._record_runs()
            self._record(stage, n, planned, seconds, mono, cold, error)

    def _record_runs(self) -> None:
        """Record the queued successful stage runs, oldest first (``_record_lock`` held)."""
        runs = self._runs
        while runs:
            self._record(*runs.popleft())

    def _record_queued(self) -> None:
        """Record the queued stage runs now (any thread but the worker's hot path)."""
        if self._runs:
            with self._record_lock:
                self._record_runs()

    # -- faults ---------------------------------------------------------------------------
    def _stage_ran(self, stage: int, batch: int, seconds: float, failed: bool,
                   error: Any, mono: Optional[float] = None, cold: bool = False) -> None:
        """Record a stage run for health: its slowdown (not of a cold run), whether it failed."""
        if mono is None:
            mono = time.monotonic()
        disable = False
        with self._health_lock:
            if seconds > 0 and not cold:
                p50 = self._p50.get((stage, batch))
                if p50 is None:     # the calibration does not change: looked up once
                    p50 = self._p50[(stage, batch)] = self.times.calibrated(stage, batch)[0]
                self._stage_ratio[stage].append((mono, seconds / p50))
                if mono - self._stall_checked >= 0.5:
                    self._log_stall(mono)
            if not failed:
                self._fail_streak[stage] = 0
                return
            self._failures[stage] += 1
            self._fail_streak[stage] += 1
            self._last_failure[stage] = mono
            disable = self._fail_streak[stage] >= FAIL_LIMIT
            # One log line per stage and second at most (a broken stage fails every run).
            if mono - self._fail_logged.get(stage, -1e9) >= 1.0:
                self._fail_logged[stage] = mono
                log.error('stage %d failed (%d so far): %s', stage, self._failures[stage],
                          error)
        if disable:
            self._limit_depth(stage - 1)

    def _limit_depth(self, depth: int) -> None:
        """Run no stage past ``depth`` any more: plans and tasks stop there."""
        with self._lock:
            if depth >= self.max_depth:
                return
            log.error('stage %d failed %d runs in a row: running at most %d of %d stages '
                      'until the model is configured again', depth + 1, FAIL_LIMIT, depth,
                      self.num_stages)
            self.max_depth = depth
            now = self.clock()
            if depth == 0:
                for tid in list(self._tasks):
                    self._end_failed(tid, now)
                return
            self._plan_profile = truncate_profile(self.profile, depth)
            self.policy = self._make_policy(*self._policy_args)
            for task in self._tasks.values():
                task.num_stages = min(task.num_stages, depth)
            if self._running:
                self._set_link()

    def _end_failed(self, tid: int, now: float) -> None:
        """End a task that cannot go on: its deepest finite exit if any, else ``error``."""
        if tid not in self._tasks:
            return
        if tid in self._result:
            self._finish(tid, now, 'failed')
        else:
            self._drop(tid, ERROR, now)

    # -- outcomes -------------------------------------------------------------------------
    def _close(self, tid: int) -> Tuple[_Frame, int]:
        """Forget a task; return its frame and its crop's index there."""
        self._tasks.pop(tid, None)
        if self._link is not None:
            self._link.removed(tid)
        if self._guard_of:
            self._guard_of.pop(tid, None)
        self._state.pop(tid, None)
        frame, i = self._task_frame.pop(tid)
        frame.open.discard(tid)
        return frame, i

    def _finish(self, tid: int, now: float, where: str = 'other',
                started: float = float('nan')) -> None:
        task = self._tasks[tid]
        # Judged against the frame's deadline: the task's own is earlier by its guard.
        deadline = task.deadline + self._guard_of.get(tid, 0.0)
        frame, i = self._close(tid)
        res = self._result.pop(tid, None)
        if res is not None:
            pred, conf = res
            frame.results.append(CropResult(
                pred, self.classes[pred], conf, task.stages_done, self._net_stages,
                self.policy.expected_accuracy(task), frame.rois[i]))
        if now > deadline:
            frame.late = True
            self._late_causes[where] = self._late_causes.get(where, 0) + 1
            self._late_recent.append((where, task.stages_done, now - deadline,
                                      started - deadline))
        if not frame.open:
            self._emit_frame(frame, now)

    def _drop(self, tid: int, reason: str, now: float, defer: bool = False) -> None:
        frame, _ = self._close(tid)
        self._result.pop(tid, None)
        frame.reasons.append(reason)
        if not frame.open:
            self._emit_frame(frame, now, defer)

    def _emit_frame(self, frame: _Frame, now: float, defer: bool = False) -> None:
        """Emit the one outcome of a frame whose tasks are all closed."""
        job = frame.job
        del self._frames[job.frame_id]
        if frame.results:
            outcome = LATE if frame.late else ON_TIME
            reason = ''
        else:
            outcome, reason = DROPPED, frame.reasons[0] if frame.reasons else ERROR
        out = FrameOutcome(job, outcome, reason, frame.results, now)
        if defer and outcome == DROPPED:
            # The worker's drops go out after the stage it decides to run: publishing them
            # first delayed that stage past the deadlines it was planned for.
            self._deferred.append(out)
        else:
            self._emit(out)

    def _emit_deferred(self) -> None:
        """Emit the drops the worker deferred (whoever takes the list emits it, once)."""
        if not self._deferred:      # a cheap look first (most cycles drop nothing)
            return
        with self._lock:
            outs, self._deferred = self._deferred, []
        for out in outs:
            self._emit(out)

    def _emit(self, outcome: FrameOutcome) -> None:
        """Deliver one outcome: queued from the worker and the watcher, else called here."""
        me = threading.get_ident()
        if self._delivering and me in self._queue_from:
            t0 = time.perf_counter()
            self._outbox.append(outcome)
            if not self._delivering:
                # stop() drained the queue meanwhile: what is left is delivered here.
                self._flush_outbox()
            # The delivery thread is woken once per cycle (``_wake_delivery``), not per
            # outcome: at overload a wake-up per outcome made a thread switch per outcome.
            if me == self._worker_ident:   # the worker's figures
                self._t_emit += time.perf_counter() - t0
            return
        self._call(outcome)

    def _wake_delivery(self) -> None:
        """Wake the delivery thread if outcomes are queued and it waits for them."""
        if self._outbox and self._out_waiting:
            t0 = time.perf_counter()
            with self._out_cond:
                self._out_cond.notify()
            if threading.get_ident() == self._worker_ident:
                self._t_emit += time.perf_counter() - t0

    def _call(self, outcome: FrameOutcome) -> None:
        try:
            self.on_outcome(outcome)
        except Exception:  # noqa: B902 - a failing callback must not stop the worker
            log.exception('outcome callback failed')

    def _flush_outbox(self) -> None:
        """Deliver every queued outcome in this thread (each is popped once)."""
        while self._outbox:
            try:
                out = self._outbox.popleft()
            except IndexError:
                return
            self._call(out)

    def _deliver(self) -> None:
        """Call ``on_outcome`` for the queued outcomes, in order (the delivery thread)."""
        box, cond = self._outbox, self._out_cond
        while True:
            self._flush_outbox()
            self._record_queued()      # after the outcomes: they are waited for
            with cond:
                if not self._delivering:
                    return
                # Flag first, look again second: an outcome queued before the flag was
                # seen is found here, one queued after it notifies.
                self._out_waiting = True
                if not box:
                    cond.wait(0.1)
                self._out_waiting = False
