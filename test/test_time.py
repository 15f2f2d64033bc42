"""
Time through the real node process on sim time (README, "Reliability" / "Time").

This process publishes ``/clock`` (rosgraph_msgs/Clock) and two cameras whose stamps
follow it; the node runs with ``use_sim_time:=true``.

- ``/clock`` jumps back 30 s (a looping bag) and forward 60 s while frames flow, each
  jump right after a burst (frames in progress when it comes): every frame is answered
  exactly once (the node's counters agree), no answer comes later than its relative
  deadline plus the machine's delays (wall time), the published latency is small (the
  jump is not counted as time the frame waited), frames in progress over the forward
  jump keep the time they had left, the status timer goes on, and the log warns.
- Stamps 5 s in the future or 1 h in the past (beyond ``stamp_tolerance_s``) end as
  ``bad_input``; a stamp in the future within it, with ``deadline_from:=stamp``, gets no
  deadline later than its relative deadline after arrival.
- A camera whose publisher disappears and comes back changes nothing for the other one.
- ``/clock`` paused (the executor's clock standing still): every frame is still answered.
"""
import os
import re
import subprocess
import threading
import time
from typing import Callable, Dict, List, Optional

from node_helpers import Peer, start_node
import pytest

pytestmark = pytest.mark.slow
DEADLINE_S = 1.0          # light for this machine (see test_node.py)
SIM_START_NS = 1_000_000 * 10**9      # a bag's clock, far from wall time
CLOCK_PERIOD_S = 0.01                 # /clock at 100 Hz, as ros2 bag play --clock 100


class TimedPeer(Peer):
    """The test's node: also notes when (monotonic) each answer came."""

    def __post_init__(self) -> None:
        self.recv_at: Dict[tuple, float] = {}
        super().__post_init__()

    def _answer(self, camera: int, msg) -> None:
        key = (camera, msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
        self.recv_at.setdefault(key, time.monotonic())
        super()._answer(camera, msg)


class SimClock:
    """The bag's clock: wall time since start plus a shift that the test jumps."""

    def __init__(self, node) -> None:
        from rosgraph_msgs.msg import Clock
        self.pub = node.create_publisher(Clock, '/clock', 10)
        self.t0 = time.monotonic()
        self.shift_ns = SIM_START_NS
        self.last_pub = 0.0

    def now_ns(self) -> int:
        return int((time.monotonic() - self.t0) * 1e9) + self.shift_ns

    def jump(self, seconds: float) -> None:
        self.shift_ns += int(seconds * 1e9)
        self.tick(force=True)

    def tick(self, force: bool = False) -> None:
        """Publish /clock when its period is up."""
        from rosgraph_msgs.msg import Clock
        t = time.monotonic()
        if force or t - self.last_pub >= CLOCK_PERIOD_S:
            self.last_pub = t
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(self.now_ns(), 10**9)
            self.pub.publish(msg)


@pytest.fixture(scope='module')
def peer():
    import rclpy
    rclpy.init()
    node = rclpy.create_node('time_tester')
    proc = start_node(['-p', 'use_sim_time:=true', '-p', f'deadline_ms:={1000 * DEADLINE_S}',
                       '-p', 'max_queue:=1000', '-p', 'stamp_tolerance_s:=100.0',
                       '-p', 'status_rate_hz:=4.0'])
    p = TimedPeer(node)
    p.proc = proc
    p.log_lines: List[str] = []
    drain = threading.Thread(target=lambda: p.log_lines.extend(iter(proc.stdout.readline, '')),
                             daemon=True)
    drain.start()
    p.drain = drain
    p.sim = SimClock(node)
    p.sent: Dict[tuple, float] = {}       # (camera, stamp ns) -> monotonic time sent
    try:
        p.wait_active()
        # The node's clock follows /clock before any frame is sent.

        def follows() -> bool:
            return bool(p.status) and abs(_ns(p.status[-1].header.stamp) -
                                          p.sim.now_ns()) < 10**9
        assert run(p, follows, 30.0), 'the node does not follow /clock'
        yield p
    finally:
        if proc.returncode is None:
            print(stop(p)[-3000:])
        node.destroy_node()
        rclpy.shutdown()


def stop(p) -> str:
    """SIGTERM the node; return its log (read by the drain thread); it must exit cleanly."""
    p.proc.terminate()
    try:
        p.proc.wait(30)
    except subprocess.TimeoutExpired:
        p.proc.kill()
        p.proc.wait()
    p.drain.join(5.0)
    assert p.proc.returncode in (0, -15), f'node exited {p.proc.returncode}'
    return ''.join(p.log_lines)


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def run(p, pred: Callable[[], bool], timeout: float, step: Optional[Callable] = None) -> bool:
    """Spin with /clock ticking (and ``step()`` each turn) until ``pred()`` or timeout."""
    import rclpy
    end = time.monotonic() + timeout
    while not pred() and time.monotonic() < end:
        p.sim.tick()
        if step is not None:
            step()
        rclpy.spin_once(p.node, timeout_sec=0.002)
    return bool(pred())


def publish(p, camera: int, offset_s: float = 0.0, pub=None) -> tuple:
    """Publish a frame stamped on the sim clock (+ offset), unique per camera; its key."""
    stamp = p.sim.now_ns() + int(offset_s * 1e9)
    while (camera, stamp) in p.sent:       # the answers are keyed by camera and stamp
        stamp += 1000
    msg, stamp = p.frame(camera, index=len(p.sent) % 64, stamp_ns=stamp)
    (pub or p.pubs[camera]).publish(msg)
    p.sent[(camera, stamp)] = time.monotonic()
    return camera, stamp


def settle(p, keys, timeout: float = 30.0):
    """Wait for every key's answer and a status with nothing in flight; return the status."""
    def done():
        st = p.status[-1] if p.status else None
        return all(k in p.answers for k in keys) and st is not None and \
            st.queue_length == 0 and st.frames_received == len(p.sent)
    run(p, done, timeout)
    return p.status[-1]


def check_accounting(p, st) -> None:
    assert p.duplicates == 0, 'a frame answered twice'
    missing = [k for k in p.sent if k not in p.answers]
    assert not missing, f'{len(missing)} of {len(p.sent)} frames never answered'
    assert st.frames_received == len(p.sent), (st.frames_received, len(p.sent))
    assert st.frames_received == st.frames_on_time + st.frames_late + st.frames_dropped, st


def test_clock_jumping_back_and_forward_holds_no_frame(peer):
    from anytime_infer.msg import DetectionArray
    p = peer
    keys = []
    marks = {}
    t0 = time.monotonic()
    # (time, what): frames at 20 Hz per camera; a burst of 20 per camera, then the jump.
    plan = [(2.0, 'burst'), (2.05, -30.0), (8.0, 'burst'), (8.05, 60.0), (10.0, 'end')]
    state = {'next': t0}

    def step():
        t = time.monotonic()
        if plan and t - t0 >= plan[0][0]:
            _, what = plan.pop(0)
            if what == 'burst':
                keys.extend(publish(p, i % 2) for i in range(40))
            elif what != 'end':
                marks[what] = (p.sim.now_ns(), len(keys))
                p.sim.jump(what)
        if t >= state['next'] and plan:
            state['next'] += 0.05
            keys.extend(publish(p, cam) for cam in (0, 1))
    run(p, lambda: not plan, 30.0, step)
    st = settle(p, keys)
    check_accounting(p, st)
    answers = [p.answers[k] for k in keys]
    wall = [p.recv_at[k] - p.sent[k] for k in keys]
    latency = [_ns(a.latency) * 1e-9 for a in answers]
    late = sum(a.outcome == DetectionArray.LATE for a in answers)
    dropped = sum(a.outcome == DetectionArray.DROPPED for a in answers)
    print(f'{len(keys)} frames over two jumps: {late} late, {dropped} dropped, latency max '
          f'{max(latency):.3f} s (published), {max(wall):.3f} s (wall)')
    # Nothing is held for a deadline that a jump moved away (30 s back), and no frame
    # pays for a jump forward (60 s): answers come within the relative deadline plus this
    # machine's delays, in wall time and in the published latency.
    assert max(wall) < DEADLINE_S + 5.0, max(wall)
    assert max(latency) < DEADLINE_S + 5.0, max(latency)
    # Misses are this busy machine's (a burst), not the jumps': few, none but infeasible.
    assert late + dropped <= 0.05 * len(keys), (late, dropped)
    assert {a.reason for a in answers if a.reason} <= {'infeasible'}, answers
    # Frames in progress over the jump forward keep the time they had left: their
    # deadline moved with the clock (stamped before, deadline after the jump); the
    # latency bound above shows they did not wait for it.
    fwd_at, n_before = marks[60.0]
    over = [a for a in answers[:n_before] if _ns(a.deadline) > fwd_at + 30 * 10**9]
    print(f'{len(over)} frames in progress over the forward jump, '
          f'{sum(a.outcome == DetectionArray.ON_TIME for a in over)} on time')
    assert over, 'no frame was in progress at the forward jump: the test did not test it'
    # The status timer (on the ROS clock) goes on after the jumps.
    n = len(p.status)
    assert run(p, lambda: len(p.status) >= n + 2, 10.0), 'no status after the jumps'
    log = ''.join(p.log_lines)
    warned = [float(x) for x in re.findall(r'ROS clock jumped ([-+][0-9.]+) s', log)]
    assert any(abs(x + 30) < 0.5 for x in warned) and any(abs(x - 60) < 0.5 for x in warned), \
        log[-3000:]


def test_stamps_far_off_are_bad_input_and_future_stamps_hold_no_frame(peer):
    from anytime_infer.msg import DetectionArray
    p = peer
    for name, value in (('stamp_tolerance_s', 2.0), ('deadline_from', 'stamp')):
        assert p.set_param(name, value)[0]
    try:
        cases = []
        for i in range(6):
            offset = (5.0, -3600.0, 1.5)[i % 3]
            sim = p.sim.now_ns()
            cases.append((offset, sim, publish(p, i % 2, offset)))
            run(p, lambda: cases[-1][2] in p.answers, 10.0)
        st = settle(p, [k for _, _, k in cases])
        check_accounting(p, st)
        for offset, sim, key in cases:
            a = p.answers[key]
            if abs(offset) > 2.0:
                assert a.outcome == DetectionArray.DROPPED and a.reason == 'bad_input', a
                continue
            assert a.outcome != DetectionArray.DROPPED, a
            # Deadline from the stamp, but never more than the relative deadline after
            # arrival (the frame arrived within 0.5 s of sim time after it was sent).
            assert _ns(a.deadline) <= sim + int((DEADLINE_S + 0.5) * 1e9), \
                (_ns(a.deadline) - sim) * 1e-9
            assert p.recv_at[key] - p.sent[key] < DEADLINE_S + 5.0
        log = ''.join(p.log_lines)
        assert 'dropped a frame: header stamp' in log, log[-3000:]
    finally:
        assert p.set_param('deadline_from', 'arrival')[0]
        assert p.set_param('stamp_tolerance_s', 100.0)[0]


def test_a_camera_going_away_and_back_changes_nothing_for_the_other(peer):
    from anytime_infer.msg import DetectionArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    p = peer
    cam0, cam1 = [], []
    t0 = time.monotonic()
    state = {'next': t0, 'pub1': p.pubs[1], 'phase': 0}
    topic1 = p.pubs[1].topic_name

    def step():
        t = time.monotonic() - t0
        if state['phase'] == 0 and t >= 2.0:       # camera 1 goes away
            p.node.destroy_publisher(state['pub1'])
            state['pub1'], state['phase'] = None, 1
        elif state['phase'] == 1 and t >= 4.0:     # ... and comes back (a new publisher)
            state['pub1'] = p.node.create_publisher(Image, topic1, QoSProfile(
                depth=100, reliability=ReliabilityPolicy.RELIABLE))
            state['phase'] = 2
        if time.monotonic() >= state['next'] and t < 7.0:
            state['next'] += 0.05
            cam0.append(publish(p, 0))
            pub1 = state['pub1']
            if pub1 is not None and pub1.get_subscription_count():
                cam1.append(publish(p, 1, pub=pub1))
    try:
        run(p, lambda: time.monotonic() - t0 >= 7.0, 20.0, step)
        st = settle(p, cam0 + cam1)
    finally:
        if state['pub1'] is not None:
            p.pubs[1] = state['pub1']
    check_accounting(p, st)
    back = [k for k in cam1 if p.sent[k] - t0 >= 4.0]
    print(f'camera 0: {len(cam0)} frames; camera 1: {len(cam1)} ({len(back)} after it '
          'came back)')
    assert back, 'camera 1 was not answered after its publisher came back'
    answers = [p.answers[k] for k in cam0]
    assert all(a.outcome == DetectionArray.ON_TIME for a in answers), \
        [(a.outcome, a.reason) for a in answers if a.outcome != DetectionArray.ON_TIME]
    # No gap in camera 0's answers while camera 1 went away and came back: each came
    # within its deadline plus delivery (wall time; the largest gap between two answers
    # is printed, it includes this process's own delays in sending).
    delay = [p.recv_at[k] - p.sent[k] for k in cam0]
    times = sorted(p.recv_at[k] - t0 for k in cam0)
    gap = max(zip(times[1:], times), key=lambda x: x[0] - x[1])
    print(f'camera 0: answered within {max(delay):.3f} s of sending; largest gap between '
          f'answers {gap[0] - gap[1]:.3f} s (at {gap[1]:.2f} s)')
    assert max(delay) < DEADLINE_S + 1.0, max(delay)


def test_no_exception_in_the_log(peer):
    log = stop(peer)
    assert 'Traceback' not in log and '[ERROR]' not in log, log[-4000:]


def test_a_paused_clock_holds_no_frame():
    """/clock paused (a bag paused or ended): the executor's time stands still."""
    from anytime_infer.demo import load_samples
    from anytime_infer.executor import Executor, FrameJob
    from anytime_infer.model.store import load_model, PROFILE, read_json, resolve_model_dir
    from anytime_infer.scheduler.profiles import profile_from_dict
    folder = resolve_model_dir('traffic_lights')
    net, card = load_model(folder)
    raw = read_json(os.path.join(folder, PROFILE), 'profile')
    outcomes = []
    lock = threading.Lock()

    def on_outcome(o):
        with lock:
            outcomes.append(o)
    frozen = 1000.0
    ex = Executor(net, card, profile_from_dict(raw), raw['temperature'], on_outcome,
                  device='cpu', clock=lambda: frozen)
    ex.start()
    try:
        images = load_samples('traffic_lights')['images']
        n = 40         # far more work than the 20 ms deadline allows: the plan cuts depth
        for i in range(n):
            ex.submit(FrameJob(i % 2, frozen, frozen + 0.02, images[i:i + 1], meta=i))
        end = time.monotonic() + 20.0
        while len(outcomes) < n and time.monotonic() < end:
            time.sleep(0.01)
    finally:
        ex.stop()
    # Every frame answered while the clock stood still (none waits for it to move), once.
    assert sorted(o.job.meta for o in outcomes) == list(range(n))
    assert all(o.outcome != 'dropped' or o.reason != 'shutdown' for o in outcomes), \
        [o.reason for o in outcomes]
