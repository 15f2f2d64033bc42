"""
AnytimeInferNode: camera topics in, anytime detections out (a managed lifecycle node).

configure loads the model and its profile and warms the device up; activate subscribes to
the cameras and starts the executor; deactivate stops both (pending frames end published
or dropped as ``shutdown``); cleanup frees the model. With ``autostart`` the node
configures and activates itself. The node decides nothing: it converts, stamps, hands
frames to the executor and publishes what comes back; every received frame ends in exactly
one counted outcome.
"""
from collections import Counter, deque
import dataclasses
from dataclasses import replace
import os
import threading
import time
from typing import Dict, List, Optional

from anytime_infer.executor import FrameJob, FrameOutcome
from anytime_infer.msg import Detection, DetectionArray, SchedulerStatus
from anytime_infer.node.gcwatch import collect_heap, GcPauses
from anytime_infer.node.imageconv import BadInput, compressed_to_array, image_to_array, \
    to_model_input
from anytime_infer.node.params import ACTIVATE, CONFIGURE, NodeConfig, normalized, RUN, \
    SPEC, SPECS, validate, validate_config
from anytime_infer.node.vision import VisionOutputs
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, \
    SetParametersResult
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

# The scheduler's diagnostics WARN when more than this share of the frames received in the
# last MISS_WINDOW_S seconds ended late or dropped.
MISS_WINDOW_S = 5.0
MISS_WARN_SHARE = 0.05
# Stage failures keep the executor's diagnostics at WARN this long after the last one.
FAILURE_WARN_S = 10.0
# Clock jumps (README, "Time"): a step of the ROS clock backwards, or forwards by more than
# this, is a jump, not time passing: it is taken out of the executor's clock.
CLOCK_JUMP_FORWARD_S = 1.0
CLOCK_WARN_EVERY_S = 5.0
SUFFIXES = ('/image_raw/compressed', '/image/compressed', '/compressed', '/image_raw',
            '/image')


def camera_name(topic: str) -> str:
    """Return the camera namespace of an image topic (outputs: ``<camera>/detections``)."""
    for suf in SUFFIXES:
        if topic.endswith(suf) and len(topic) > len(suf):
            return topic[:-len(suf)]
    return topic


def to_time(seconds: float) -> Time:
    """Seconds -> builtin_interfaces/Time."""
    ns = int(round(seconds * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def to_duration(seconds: float) -> Duration:
    """Seconds (>= 0) -> builtin_interfaces/Duration."""
    ns = max(int(round(seconds * 1e9)), 0)
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _kv_value(v) -> str:
    """Render a diagnostics value: floats to 4 significant digits, dicts as k=v pairs."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f'{v:.4g}'
    if isinstance(v, dict):
        return ' '.join(f'{k}={_kv_value(x)}' for k, x in sorted(v.items()))
    return str(v)


def _median(values) -> float:
    """Median of a (possibly empty) sequence of numbers."""
    vals = sorted(values)
    return vals[len(vals) // 2] if vals else 0.0


class AnytimeInferNode(LifecycleNode):
    """The anytime inference node."""

    def __init__(self, **kwargs) -> None:
        super().__init__('anytime_infer', **kwargs)
        for spec in SPECS:
            self.declare_parameter(spec.name, spec.default, self._descriptor(spec))
        self.cfg = self._read_config()
        bad = validate_config(self.cfg)
        if bad:
            raise ValueError('invalid parameters: ' + '; '.join(bad))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.executor_ = None
        self.card: Optional[dict] = None
        self._subs: List = []
        self._pubs: Dict[str, object] = {}
        self._camera_of: Dict[str, str] = {}
        self._rois: Dict[int, deque] = {}     # camera -> recent (stamp, [x, y, w, h]...)
        self._debug_pubs: Dict[str, object] = {}   # camera -> annotated image publisher
        self._status_pub = None
        self._vision: Optional[VisionOutputs] = None   # vision_msgs outputs, where installed
        self._diag_pub = None
        self._timer = None
        self._active = False
        self._lock = threading.Lock()
        self._pub_lock = threading.Lock()   # debug publishers: made / destroyed at run time
        self._failures_seen: Dict[int, int] = {}   # stage -> failures at the last status
        self._failures_at = -1e9                   # monotonic time failures last grew
        self._missed_hist: deque = deque()         # (time, received, late + dropped)
        self.counts: Counter = Counter()
        self.depth_sum = 0
        self._warned: Dict[tuple, float] = {}
        self._arrivals: deque = deque(maxlen=100000)
        # The executor's clock: the ROS clock with its jumps taken out (see _on_clock_jump).
        self._clock_offset = 0.0
        self._time_lock = threading.Lock()
        self._jump_handle = None
        self._jumps = 0                 # jumps taken out since the last warning
        self._jump_warned = -1e9
        self._jump_locked = False
        self._before_jump: Optional[tuple] = None
        self._conversion_s: deque = deque(maxlen=1000)   # per-frame conversion time
        self._gc = GcPauses()           # collector pauses, for /diagnostics
        self._gc.install()
        if self.cfg.autostart:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise RuntimeError('autostart: configure failed (see the log)')
            self.trigger_activate()

    # -- parameters -----------------------------------------------------------------------
    @staticmethod
    def _descriptor(spec) -> ParameterDescriptor:
        d = ParameterDescriptor(description=spec.description)
        if spec.choices:
            d.additional_constraints = 'one of: ' + ', '.join(map(str, spec.choices))
        if spec.low is not None and not isinstance(spec.default, list):
            if isinstance(spec.default, int) and not isinstance(spec.default, bool):
                d.integer_range = [IntegerRange(from_value=int(spec.low),
                                                to_value=int(spec.high), step=1)]
            elif isinstance(spec.default, float):
                d.floating_point_range = [FloatingPointRange(from_value=float(spec.low),
                                                             to_value=float(spec.high))]
        return d

    def _read_config(self) -> NodeConfig:
        return NodeConfig(**{s.name: normalized(s.name, self.get_parameter(s.name).value)
                             for s in SPECS})

    def _refusal(self, name: str, old, new) -> str:
        """Why a valid new value cannot be applied in the current lifecycle state ('' = can)."""
        spec = SPEC[name]
        if new == old or spec.applies == RUN:
            return ''
        if spec.applies == ACTIVATE and self._active:
            return (f'{name} is used when the node subscribes, at activate: deactivate, set '
                    'it, activate')
        if spec.applies == CONFIGURE and self.executor_ is not None:
            return (f'{name} takes effect at configure: deactivate and clean up the node, '
                    'set it, configure')
        if spec.applies not in (RUN, ACTIVATE, CONFIGURE):
            return f'{name} is read once when the node starts'
        return ''

    def _on_set_parameters(self, params) -> SetParametersResult:
        """
        Validate and apply new values all together, between two frames, or refuse them all.

        Runs in the node's executor thread, as the image callbacks do; the worker thread
        reads the config through one reference, replaced at once (never half-updated).
        """
        old = self.cfg
        new = replace(old, **{p.name: normalized(p.name, p.value) for p in params
                              if p.name in SPEC})
        for p in params:
            if p.name not in SPEC:
                continue
            why = validate(p.name, p.value, len(new.camera_topics)) or \
                self._refusal(p.name, getattr(old, p.name), getattr(new, p.name))
            if why:
                return SetParametersResult(successful=False, reason=why)
        bad = validate_config(new)    # e.g. fewer cameras than entries of weights
        if bad:
            return SetParametersResult(successful=False, reason='; '.join(bad))
        why = self._apply_policy(old, new)
        if why:
            return SetParametersResult(successful=False, reason=why)
        if self.executor_ is not None:
            self.executor_.max_pending = new.max_queue
        self.cfg = new
        if new.debug_image != old.debug_image and self.executor_ is not None:
            self._make_debug_pubs(new.debug_image)
        if new.status_rate_hz != old.status_rate_hz and self._timer is not None:
            self._start_status_timer()
        return SetParametersResult(successful=True)

    def _apply_policy(self, old: NodeConfig, new: NodeConfig) -> str:
        """Swap the executor's policy for a new policy or depth; return why not ('' = done)."""
        ex = self.executor_
        if ex is None or new.policy == old.policy and (new.policy != 'fixed_depth' or
                                                       new.fixed_depth == old.fixed_depth):
            return ''      # nothing the executor's policy uses changed
        if new.policy == 'fixed_depth' and new.fixed_depth > ex.net.num_stages:
            return (f'fixed_depth {new.fixed_depth} exceeds the {ex.net.num_stages} stages of '
                    f'model {new.model}')
        try:
            ex.set_policy(new.policy, new.fixed_depth)
        except ValueError as e:
            return str(e)
        return ''

    def _make_debug_pubs(self, on: bool) -> None:
        """Create (on) or destroy the annotated-image publishers of every camera."""
        with self._pub_lock:
            old, self._debug_pubs = self._debug_pubs, {}
            for pub in old.values():
                self.destroy_publisher(pub)
            if on:
                self._debug_pubs = {cam: self.create_publisher(
                    Image, f'{cam}/detections/image', 2) for cam in set(self._camera_of.values())}

    def _start_status_timer(self) -> None:
        """(Re)create the status timer at the current status_rate_hz."""
        if self._timer is not None:
            self.destroy_timer(self._timer)
        self._timer = self.create_timer(1.0 / self.cfg.status_rate_hz, self._publish_status)

    # -- lifecycle ------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Load model and profile, build the executor, warm up, create publishers."""
        from anytime_infer.executor import Executor
        from anytime_infer.model.store import load_model, PROFILE, read_json, \
            resolve_model_dir
        from anytime_infer.scheduler.profiles import profile_from_dict
        try:
            if self.cfg.torch_threads > 0:
                import torch
                torch.set_num_threads(self.cfg.torch_threads)
            folder = resolve_model_dir(self.cfg.model)
            net, card = load_model(folder)
            raw = read_json(os.path.join(folder, PROFILE), 'the profile')
            profile = profile_from_dict(raw, name=folder)
            self.executor_ = Executor(
                net, card, profile, raw['temperature'], self._on_outcome,
                policy=self.cfg.policy, depth=self.cfg.fixed_depth, device=self.cfg.device,
                max_pending=self.cfg.max_queue, clock=self._now, percentile=self.cfg.percentile,
                planner=self.cfg.planner)
            self.executor_.warm_up()
        except (RuntimeError, ValueError, OSError) as e:
            self.get_logger().error(f'configure failed: {e}')
            self.executor_ = None
            return TransitionCallbackReturn.FAILURE
        self.card = card
        self._watch_clock(True)
        for topic in self.cfg.camera_topics:
            # Outputs follow the camera topic as remapped: <camera>/detections.
            cam = camera_name(self.resolve_topic_name(topic))
            self._pubs[cam] = self.create_publisher(DetectionArray, f'{cam}/detections', 1000)
            self._camera_of[topic] = cam
        self._make_debug_pubs(self.cfg.debug_image)
        self._vision = VisionOutputs.create(self, self.cfg.vision_msgs, list(self._pubs),
                                            card['classes'])
        self._status_pub = self.create_publisher(SchedulerStatus, '~/status', 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        # Everything long-lived is made now: a full collection here puts the next one (a
        # 60-120 ms pause of every thread) far away (gcwatch).
        collect_s = collect_heap()
        self.get_logger().info(
            f'configured: model {card["name"]} ({card["arch"]}, {card["num_stages"]} stages) '
            f'on {self.executor_.device}, policy {self.executor_.policy.name}, cameras '
            f'{self.cfg.camera_topics}; full collection {1000 * collect_s:.0f} ms')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Subscribe to the cameras and start the executor."""
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=self.cfg.qos_depth,
            reliability=ReliabilityPolicy.BEST_EFFORT
            if self.cfg.qos_reliability == 'best_effort' else ReliabilityPolicy.RELIABLE)
        self.executor_.start()
        for i, topic in enumerate(self.cfg.camera_topics):
            compressed = topic.endswith('/compressed')
            self._subs.append(self.create_subscription(
                CompressedImage if compressed else Image, topic,
                lambda msg, i=i, topic=topic, c=compressed: self._on_image(msg, i, topic, c),
                qos))
        for i in range(len(self.cfg.camera_topics)):
            rt = self.cfg.roi_topic(i)
            if rt:
                self._rois[i] = deque(maxlen=64)
                self._subs.append(self.create_subscription(
                    DetectionArray, rt, lambda m, i=i: self._on_rois(m, i), 10))
        self._start_status_timer()
        self._active = True
        self.get_logger().info('active')
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Unsubscribe and stop the executor (pending frames end, counted)."""
        self._active = False
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        with self._lock:
            self._rois = {}
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if self.executor_ is not None:
            self.executor_.stop()
        self._publish_status()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        """Free the model and every publisher made at configure."""
        if self._vision is not None:
            self._vision.destroy()
            self._vision = None
        self._destroy_publishers()
        self._watch_clock(False)
        self.executor_ = None
        self.card = None
        return TransitionCallbackReturn.SUCCESS

    def _destroy_publishers(self, ack_timeout_s: float = 1.0) -> None:
        """
        Destroy the publishers made at configure (a new configure makes them again).

        Waits (bounded) until subscribers have acknowledged what was published, so that
        the outcomes published while deactivating still reach them.
        """
        from rclpy.duration import Duration as RosDuration
        pubs = list(self._pubs.values()) + [self._status_pub, self._diag_pub]
        end = time.monotonic() + ack_timeout_s
        for pub in pubs:
            if pub is not None:
                left = max(end - time.monotonic(), 0.0)
                pub.wait_for_all_acked(RosDuration(nanoseconds=int(left * 1e9)))
        self._make_debug_pubs(False)
        for pub in pubs:
            if pub is not None:
                self.destroy_publisher(pub)
        self._pubs, self._camera_of = {}, {}
        self._status_pub = self._diag_pub = None

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        """Stop work cleanly on shutdown from any state."""
        if self.executor_ is not None:
            self.executor_.stop()
        self._watch_clock(False)
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Stop timing the collector, then destroy the node."""
        self._gc.remove()
        super().destroy_node()

    # -- time (README, "Time") --------------------------------------------------------------
    def _watch_clock(self, on: bool) -> None:
        """Register (on) or remove the ROS clock's jump callbacks."""
        from rclpy.clock import JumpThreshold
        from rclpy.duration import Duration as RosDuration
        if self._jump_handle is not None:
            self._jump_handle.unregister()
            self._jump_handle = None
        if on:
            self._clock_offset = 0.0
            fwd = RosDuration(nanoseconds=int(CLOCK_JUMP_FORWARD_S * 1e9))
            self._jump_handle = self.get_clock().create_jump_callback(
                JumpThreshold(min_forward=fwd, min_backward=RosDuration(nanoseconds=-1),
                              on_clock_change=True),
                pre_callback=self._before_clock_jump, post_callback=self._on_clock_jump)

    def _before_clock_jump(self) -> None:
        """Hold the executor's clock still over a jump; remember where it was."""
        # Released in _on_clock_jump (same thread, right after the ROS clock is set): the
        # executor never reads the new time with the old offset. Bounded: no deadlock.
        self._jump_locked = self._time_lock.acquire(timeout=1.0)
        self._before_jump = (self.get_clock().now().nanoseconds * 1e-9, self._clock_offset)

    def _on_clock_jump(self, jump) -> None:
        """Take a jump of the ROS clock out of the executor's clock; warn (throttled)."""
        before, self._before_jump = self._before_jump, None
        delta = jump.delta.nanoseconds * 1e-9
        try:
            ros = self.get_clock().now().nanoseconds * 1e-9
            # The executor's clock goes on from where it was (also when sim time is
            # switched on or off, a jump whose delta rcl reports as 0).
            delta = ros - before[0] if before else delta
            self._clock_offset -= delta
        finally:
            if self._jump_locked:
                self._jump_locked = False
                self._time_lock.release()
        if before is not None and before[0] == 0.0:
            return     # the first /clock: sim time starts (ROS time 0 means not yet set)
        self._jumps += 1
        t = time.monotonic()
        if t - self._jump_warned >= CLOCK_WARN_EVERY_S:
            self._jump_warned, n, self._jumps = t, self._jumps, 0
            self.get_logger().warning(
                f'ROS clock jumped {delta:+.3f} s ({n} jump(s) since the last warning; '
                'a looping or skipping /clock?): frames in progress keep the time they had '
                'left')

    def _times(self) -> tuple:
        """Return (ROS clock now, executor clock now), in seconds, read together."""
        got = self._time_lock.acquire(timeout=1.0)
        try:
            ros = self.get_clock().now().nanoseconds * 1e-9
            return ros, ros + self._clock_offset
        finally:
            if got:
                self._time_lock.release()

    def _now(self) -> float:
        """Return the executor's clock: the ROS clock with its jumps taken out."""
        return self._times()[1]

    # -- per frame ------------------------------------------------------------------------

    def _warn(self, topic: str, reason: str) -> None:
        """Warn at most every 5 s per topic and reason (throttled)."""
        key = (topic, reason.split(' ')[0])
        t = time.monotonic()
        if t - self._warned.get(key, -1e9) >= 5.0:
            self._warned[key] = t
            self.get_logger().warning(f'{topic}: dropped a frame: {reason}')

    def _on_image(self, msg, camera: int, topic: str, compressed: bool) -> None:
        t_conv = time.perf_counter()
        cfg = self.cfg     # one frame, one config (a parameter change replaces the object)
        ros_now, now = self._times()
        with self._lock:
            self.counts['received'] += 1
            self._arrivals.append(time.monotonic())
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        job = FrameJob(camera, now, now + cfg.deadline_s(camera), None, [],
                       cfg.weight(camera), stamp, (msg.header, topic, None))
        try:
            if abs(stamp - ros_now) > cfg.stamp_tolerance_s:
                raise BadInput(f'header stamp {stamp:.3f} is {stamp - ros_now:+.3f} s from the '
                               f'node clock (tolerance {cfg.stamp_tolerance_s} s)')
            arr, enc = (compressed_to_array if compressed else image_to_array)(
                msg, cfg.max_image_pixels)
            pre = self.card['preprocess']
            job.rois = self._regions(camera, stamp, arr.shape[1], arr.shape[0])
            if not job.rois:   # regions configured, none for this frame: nothing to classify
                self._on_outcome(FrameOutcome(job, 'on_time', '', [], now))
                return
            job.inputs = np.stack([
                to_model_input(arr[y:y + h, x:x + w], enc, pre['height'], pre['width'],
                               pre['channels']) for x, y, w, h in job.rois])
            if cfg.debug_image:
                job.meta = (msg.header, topic, (arr, enc))
        except BadInput as e:
            self._warn(topic, str(e))
            self._on_outcome(FrameOutcome(job, 'dropped', 'bad_input', [], now))
            return
        except Exception as e:  # noqa: B902 - a bad message never stops the node
            self._warn(topic, f'unexpected conversion error: {e}')
            self._on_outcome(FrameOutcome(job, 'dropped', 'bad_input', [], now))
            return
        if cfg.deadline_from == 'stamp':
            # Never later than the relative deadline after arrival (a future stamp).
            job.deadline = now + min(stamp - ros_now, 0.0) + cfg.deadline_s(camera)
        self._conversion_s.append(time.perf_counter() - t_conv)
        self.executor_.submit(job)

    def _on_rois(self, msg: DetectionArray, camera: int) -> None:
        """Keep the regions of interest another node found in a camera's frame."""
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        rois = [(d.roi.x_offset, d.roi.y_offset, d.roi.width, d.roi.height)
                for d in msg.detections]
        with self._lock:
            self._rois[camera].append((stamp, rois))

    def _regions(self, camera: int, stamp: float, width: int, height: int) -> List[tuple]:
        """
        Return the regions to classify in a frame, clipped to it (whole frame by default).

        With a ROI topic: the regions with the frame's stamp, else the latest ones at most
        ``roi_max_age_s`` older; none (an empty list) when there are no such regions.
        """
        if camera not in self._rois:
            return [(0, 0, width, height)]
        with self._lock:
            known = list(self._rois[camera])
        match = next((r for s, r in reversed(known) if abs(s - stamp) < 1e-6), None)
        if match is None:
            recent = [(s, r) for s, r in known if 0 <= stamp - s <= self.cfg.roi_max_age_s]
            match = recent[-1][1] if recent else []
        out = []
        for x, y, w, h in match:
            x0, y0 = min(max(int(x), 0), width), min(max(int(y), 0), height)
            x1, y1 = min(int(x) + int(w), width), min(int(y) + int(h), height)
            if x1 - x0 >= 2 and y1 - y0 >= 2:
                out.append((x0, y0, x1 - x0, y1 - y0))
        return out

    def _on_outcome(self, out) -> None:
        """Count and publish one frame's outcome (called from the worker thread too)."""
        header, topic, debug = out.job.meta
        with self._lock:
            if out.outcome == 'dropped':
                self.counts['dropped'] += 1
                self.counts['drop:' + out.reason] += 1
            else:
                self.counts[out.outcome] += 1
                self.depth_sum += max((r.depth for r in out.results), default=0)
        if out.outcome == 'dropped' and not self.cfg.publish_dropped:
            return
        # Back on the ROS clock: a deadline moves with the clock's jumps (time left kept).
        msg = DetectionArray(header=header, deadline=to_time(out.job.deadline -
                                                             self._clock_offset),
                             latency=to_duration(out.published_at - out.job.arrival),
                             reason=out.reason)
        msg.outcome = {'on_time': DetectionArray.ON_TIME, 'late': DetectionArray.LATE,
                       'dropped': DetectionArray.DROPPED}[out.outcome]
        for r in out.results:
            d = Detection(class_id=r.class_id, label=r.label, confidence=r.confidence,
                          depth_reached=r.depth, num_stages=r.num_stages,
                          expected_accuracy=float(r.expected_accuracy))
            d.roi.x_offset, d.roi.y_offset, d.roi.width, d.roi.height = map(int, r.roi)
            msg.detections.append(d)
        cam = self._camera_of[topic]
        pub = self._pubs.get(cam)
        if pub is not None:
            pub.publish(msg)
        vision = self._vision
        if vision is not None:
            vision.publish(cam, header, out.outcome != 'dropped', out.results)
        if debug is not None and out.results:
            from anytime_infer.node.debug_image import annotate
            with self._pub_lock:   # the publisher may be destroyed by a parameter change
                dbg = self._debug_pubs.get(cam)
                if dbg is not None:
                    dbg.publish(annotate(header, debug[0], debug[1], out.results))

    # -- status ---------------------------------------------------------------------------
    def status(self) -> SchedulerStatus:
        """Counters since start and the executor's state."""
        with self._lock:
            c = dict(self.counts)
            depth_sum = self.depth_sum
        published = c.get('on_time', 0) + c.get('late', 0)
        reasons = sorted(k[5:] for k in c if k.startswith('drop:'))
        ex = self.executor_
        msg = SchedulerStatus(
            policy=ex.policy.name if ex else self.cfg.policy,
            device=str(ex.device) if ex else '',
            model=self.cfg.model,
            frames_received=c.get('received', 0), frames_on_time=c.get('on_time', 0),
            frames_late=c.get('late', 0), frames_dropped=c.get('dropped', 0),
            drop_reasons=reasons, drop_counts=[c['drop:' + r] for r in reasons],
            queue_length=ex.pending() if ex else 0,
            mean_depth=float(depth_sum / published) if published else 0.0,
            estimated_load=float(self._estimated_load()))
        msg.header.stamp = self.get_clock().now().to_msg()
        return msg

    def _estimated_load(self) -> float:
        """Full-depth work demanded per second: frame rate (last 5 s) x full-depth time."""
        ex = self.executor_
        if ex is None:
            return 0.0
        t = time.monotonic()
        with self._lock:
            while self._arrivals and self._arrivals[0] < t - 5.0:
                self._arrivals.popleft()
            n = len(self._arrivals)
        full = sum(ex.times.plan(k) for k in range(1, ex.net.num_stages + 1))
        return full * n / 5.0

    def _publish_status(self) -> None:
        st = self.status()
        if self._status_pub is not None:
            self._status_pub.publish(st)
        if self._diag_pub is None:
            return
        ex = self.executor_
        # WARN on what happened recently, not since start: a past overload must not keep
        # the node in WARN for hours.
        t = time.monotonic()
        missed = st.frames_late + st.frames_dropped
        self._missed_hist.append((t, st.frames_received, missed))
        while len(self._missed_hist) > 1 and self._missed_hist[1][0] <= t - MISS_WINDOW_S:
            self._missed_hist.popleft()
        _, rec0, miss0 = self._missed_hist[0]
        recent, recent_missed = st.frames_received - rec0, missed - miss0
        level = DiagnosticStatus.WARN if recent_missed > MISS_WARN_SHARE * max(recent, 1) \
            else DiagnosticStatus.OK
        ds = DiagnosticStatus(level=level, name='anytime_infer: scheduler',
                              hardware_id=st.device,
                              message=f'{st.frames_on_time}/{st.frames_received} on time, '
                                      f'mean depth {st.mean_depth:.2f}; {recent_missed}/'
                                      f'{recent} late or dropped in the last '
                                      f'{MISS_WINDOW_S:g} s')
        ds.values = [KeyValue(key=k, value=str(v)) for k, v in (
            ('policy', st.policy), ('model', st.model), ('received', st.frames_received),
            ('on_time', st.frames_on_time), ('late', st.frames_late),
            ('dropped', st.frames_dropped), ('queue_length', st.queue_length),
            ('mean_depth', f'{st.mean_depth:.3f}'),
            ('received_recent', recent), ('missed_recent', recent_missed),
            ('conversion_ms_p50', f'{1000 * _median(self._conversion_s):.3f}'),
            ('decision_ms_p50', f'{1000 * _median(ex.decision_s) if ex else 0.0:.3f}'),
            ('stage_ms_p50', f'{1000 * _median(ex.stage_s) if ex else 0.0:.3f}'))]
        ds.values += [KeyValue(key='dropped_' + r, value=str(n))
                      for r, n in zip(st.drop_reasons, st.drop_counts)]
        # Collections since the last status: count and longest pause (ms) per generation.
        ds.values += [KeyValue(key=k, value=f'{v:g}') for k, v in self._gc.report().items()]
        arr = DiagnosticArray(status=[ds])
        health = self._health_status(st.device)
        if health is not None:
            arr.status.append(health)
        arr.header.stamp = st.header.stamp
        self._diag_pub.publish(arr)

    def _health_status(self, hardware_id: str) -> Optional[DiagnosticStatus]:
        """
        Report the executor's health as a DiagnosticStatus (None where it has none).

        WARN while the stages run slower than profiled beyond the executor's stall factor,
        for ``FAILURE_WARN_S`` after a stage failed, and while a failing stage is disabled
        (until a new configure); OK otherwise.
        """
        ex = self.executor_
        health = getattr(ex, 'health', None) if ex is not None else None
        if health is None:
            return None
        h = health()
        fields = dataclasses.asdict(h) if dataclasses.is_dataclass(h) else dict(vars(h))
        failures = {int(k): int(n) for k, n in (fields.get('stage_failures') or {}).items()}
        now = time.monotonic()
        if any(n > self._failures_seen.get(k, 0) for k, n in failures.items()):
            self._failures_at = now
        self._failures_seen = failures
        why = []
        if fields.get('stalled'):
            why.append(f'stalled: stages {fields.get("slowdown", 0.0):.1f}x slower than '
                       'profiled')
        if now - self._failures_at < FAILURE_WARN_S:
            why.append('stage failures in the last %g s' % FAILURE_WARN_S)
        max_depth = int(fields.get('max_depth', ex.net.num_stages))
        if max_depth < ex.net.num_stages:
            why.append(f'stages past {max_depth} disabled after failures (configure again '
                       'to retry them)')
        # The executor says what is wrong in its own words; the node's reasons otherwise
        # (a failure older than the executor's window still WARNs here for a while).
        message = fields.get('message') or '; '.join(why) or 'ok'
        ds = DiagnosticStatus(level=DiagnosticStatus.WARN if why else DiagnosticStatus.OK,
                              name='anytime_infer: executor', hardware_id=hardware_id,
                              message=message)
        ds.values = [KeyValue(key=k, value=_kv_value(v)) for k, v in fields.items()]
        return ds
