"""
Stopping the node as a terminal, launch and a service manager do (issues 15.3 and 16.2).

The node runs from the venv prefix in a session of its own, as launch starts it. SIGINT to
its process group and again 0.3 s later (a terminal's Ctrl-C, then launch's), or SIGTERM
to its PID once or twice, idle and with frames queued at ~400 Hz per camera: it exits 0
with no traceback, and every frame it received is answered (a subscriber counts exactly
``frames_received`` of its last SchedulerStatus). Before the fix rclpy's handler shut the
context down first: 14-66 frames got no answer ("publisher's context is invalid") and a
second SIGINT raised KeyboardInterrupt inside ``Executor.stop()`` (exit 1 or -2).
"""
import os
import signal
import threading
import time

import numpy as np
import pytest
from ros_user import kill_group, read_log, signal_node, spin_until, start_node

pytestmark = pytest.mark.slow
RATE_HZ = 400.0          # per camera
LOAD_BEFORE_S = 1.0      # frames flow this long before the signal, and on after it
EXIT_BOUND_S = 5.0       # issue 15: exit within 5 s (16.2 asks 2 s; measured ~1 s, printed)


@pytest.fixture(scope='module')
def ros():
    import rclpy
    rclpy.init()
    node = rclpy.create_node('signal_test_camera')
    yield node
    node.destroy_node()
    rclpy.shutdown()


def _publish(pubs, node, stop: threading.Event, sent: list) -> None:
    """Publish 56x56 frames on every camera at RATE_HZ each until ``stop`` is set."""
    from anytime_infer.camera_player import frame_message
    img = np.random.default_rng(0).integers(0, 255, (56, 56, 1), dtype=np.uint8)
    msgs = [frame_message(img, 0, '') for _ in pubs]
    period = 1.0 / RATE_HZ
    t_next = time.monotonic()
    i = 0
    while not stop.is_set():
        now_ns = node.get_clock().now().nanoseconds
        for c, (pub, msg) in enumerate(zip(pubs, msgs)):
            msg.header.frame_id = f'{c}-{i}'
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
            pub.publish(msg)
        sent[0] += len(pubs)
        i += 1
        t_next += period
        time.sleep(max(t_next - time.monotonic(), 0.0))


@pytest.mark.parametrize('load,sig,group,twice', [
    (False, signal.SIGINT, True, True),
    (True, signal.SIGINT, True, True),
    (True, signal.SIGTERM, False, False),
    (True, signal.SIGTERM, False, True),
], ids=['idle-sigint-twice-group', 'load-sigint-twice-group', 'load-sigterm-pid',
        'load-sigterm-twice-pid'])
def test_stop_signal_answers_every_received_frame_and_exits_0(ros, repo_root, tmp_path, load,
                                                              sig, group, twice):
    from anytime_infer.msg import DetectionArray, SchedulerStatus
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    ns = f'/sig_{sig}_{int(group)}{int(twice)}{int(load)}'
    deep = QoSProfile(depth=10000, reliability=ReliabilityPolicy.RELIABLE)
    answers, statuses = [], []
    subs = [ros.create_subscription(DetectionArray, f'{ns}/{cam}/detections',
                                    answers.append, deep)
            for cam in ('camera_front', 'camera_rear')]
    subs.append(ros.create_subscription(SchedulerStatus, f'{ns}/anytime_infer/status',
                                        statuses.append, deep))
    pubs = [ros.create_publisher(Image, f'{ns}/{cam}/image_raw',
                                 QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
            for cam in ('camera_front', 'camera_rear')]
    log = str(tmp_path / 'node.log')
    proc = start_node(['-r', f'__ns:={ns}', '--params-file',
                       os.path.join(repo_root, 'config', 'anytime_infer.yaml'),
                       '-p', 'qos_reliability:=reliable', '-p', 'qos_depth:=1000'], log)
    stop_pub, sent, publisher = threading.Event(), [0], None
    try:
        assert spin_until(ros, lambda: bool(statuses) or proc.poll() is not None, 90), \
            'node not active within 90 s:\n' + read_log(log)[-2000:]
        assert spin_until(ros, lambda: all(p.get_subscription_count() for p in pubs), 20)
        if load:
            publisher = threading.Thread(target=_publish, args=(pubs, ros, stop_pub, sent))
            publisher.start()
            spin_until(ros, lambda: False, LOAD_BEFORE_S)
        received_before = len(answers)
        t_sig = time.monotonic()
        signal_node(proc, sig, group, twice)
        spin_until(ros, lambda: proc.poll() is not None, 15)
        took = time.monotonic() - t_sig
        stop_pub.set()
        if publisher is not None:
            publisher.join()
        spin_until(ros, lambda: False, 1.0)      # take what the node sent before it exited
        # Its endpoints left the graph at exit (no ghost until a lease timeout, ~20 s).
        graph_left = ros.count_publishers(f'{ns}/anytime_infer/status')
    finally:
        stop_pub.set()
        kill_group(proc)
        for s in subs:
            ros.destroy_subscription(s)
        for p in pubs:
            ros.destroy_publisher(p)
    out = read_log(log)
    assert proc.returncode == 0, f'exit {proc.returncode}:\n{out[-3000:]}'
    for bad in ('Traceback', 'context is invalid', 'outcome callback failed'):
        at = out.find(bad)      # the text around it: the tail may not hold it
        assert at < 0, f'{bad!r} in the node output:\n{out[max(at - 1500, 0):at + 3000]}'
    last = statuses[-1]
    reasons = dict(zip(last.drop_reasons, last.drop_counts))
    print(f'{ns}: exit 0 in {took:.2f} s; sent {sent[0]}, received {last.frames_received}, '
          f'answered {len(answers)} ({received_before} before the signal); on time '
          f'{last.frames_on_time}, late {last.frames_late}, dropped {reasons}')
    assert took < EXIT_BOUND_S, f'exit took {took:.2f} s'
    assert graph_left == 0, 'the node is still in the graph 1 s after its exit'
    keys = [(a.header.frame_id, a.header.stamp.sec, a.header.stamp.nanosec) for a in answers]
    assert len(set(keys)) == len(keys), 'a frame was answered twice'
    assert len(answers) == last.frames_received, \
        f'{last.frames_received} frames received, {len(answers)} answered'
    assert last.frames_on_time + last.frames_late + last.frames_dropped == last.frames_received
    if load:
        assert last.frames_received >= 100, 'the load did not reach the node'
        assert len(answers) > received_before, 'no frame was in flight at the signal'


def test_sigint_inherited_as_ignored_still_stops_the_node(repo_root, tmp_path):
    """
    Started with SIGINT ignored (a script's background job, nohup), SIGINT still stops it.

    As with rclpy's own handlers: launch or a test harness running in such a context sends
    SIGINT and expects a clean exit.
    """
    import subprocess
    from ros_user import NODE
    log = tmp_path / 'node.log'
    with open(log, 'w') as f:
        proc = subprocess.Popen(
            ['bash', '-c', 'trap "" INT; exec "$0" "$@"', NODE, '--ros-args', '-r',
             '__ns:=/sig_ignored', '--params-file',
             os.path.join(repo_root, 'config', 'anytime_infer.yaml')],
            stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        end = time.monotonic() + 90
        while 'active' not in read_log(log) and proc.poll() is None and \
                time.monotonic() < end:
            time.sleep(0.1)
        assert 'active' in read_log(log), read_log(log)[-2000:]
        signal_node(proc, signal.SIGINT, group=True, twice=True)
        assert proc.wait(EXIT_BOUND_S) == 0, read_log(log)[-2000:]
    finally:
        kill_group(proc)
    assert 'Traceback' not in read_log(log) and 'SIGINT: stopping' in read_log(log)
