"""
Replay over DDS: a bag played into the real node on sim time, its outputs recorded.

The node is started as the launch file starts it (separate process, ``use_sim_time``,
reliable image QoS); ``/clock`` follows the bag's time scaled by ``rate``, the images are
published at the bag's pace and every ``DetectionArray`` the node publishes is kept.
Frames that never come back count as dropped with reason ``lost``.
"""
import os
import subprocess
import time
from typing import Dict, List, Tuple

from anytime_infer.replay.bags import BagContents, BagError, camera_of
from anytime_infer.replay.reports import report
import numpy as np


def evaluate_dds(bag: str, contents: BagContents, model: str, policy: str,
                 deadline_ms: float, rate: float = 1.0, settle_s: float = 3.0,
                 progress=None) -> Tuple[Dict, List[Dict], List[Tuple[str, int, bytes]]]:
    """
    Play the bag into the real node over DDS on sim time; score its outputs.

    Returns the report, the per-frame rows and what the node published (topic, receive
    time on the bag's clock, raw CDR) for ``detections.mcap``.
    """
    from anytime_infer.ros_env import apply_ros_env_defaults
    apply_ros_env_defaults()
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import serialize_message
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage, Image

    from anytime_infer.camera_player import node_command
    from anytime_infer.msg import DetectionArray
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    repo_cfg = os.path.join(repo, 'config', 'anytime_infer.yaml')
    topics = contents.topics
    cmd = node_command(repo_cfg, [
        '-p', 'camera_topics:=[' + ','.join(topics) + ']', '-p', f'model:={model}',
        '-p', f'policy:={policy}', '-p', f'deadline_ms:={deadline_ms}',
        '-p', 'use_sim_time:=true', '-p', 'qos_reliability:=reliable', '-p', 'qos_depth:=1000',
        '-p', f'max_queue:={max(64, 8 * len(topics))}', '-p', 'stamp_tolerance_s:=1e6'])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rclpy.init()
    node = rclpy.create_node('anytime_infer_replay')
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    received: Dict[Tuple[int, int], Tuple[int, bytes, object]] = {}
    record: List[Tuple[str, int, bytes]] = []

    def on_det(msg, cam_i, det_topic):
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        received.setdefault((cam_i, stamp), msg)
        record.append((det_topic, node.get_clock().now().nanoseconds,
                       serialize_message(msg)))
    pubs = []
    for i, t in enumerate(topics):
        compressed = t.endswith('/compressed')
        pubs.append(node.create_publisher(CompressedImage if compressed else Image, t,
                                          QoSProfile(depth=50,
                                                     reliability=ReliabilityPolicy.RELIABLE)))
        det = camera_of(t) + '/detections'
        node.create_subscription(DetectionArray, det,
                                 lambda m, i=i, d=det: on_det(m, i, d), reliable)
    clock_pub = node.create_publisher(Clock, '/clock', 10)
    errors = []
    try:
        end = time.monotonic() + 90
        while time.monotonic() < end and not all(p.get_subscription_count() for p in pubs):
            rclpy.spin_once(node, timeout_sec=0.05)
        if not all(p.get_subscription_count() for p in pubs):
            raise BagError("the node did not subscribe to the bag's image topics in 90 s")
        t0 = contents.frames[0].time_ns
        start = time.monotonic()

        def tick() -> None:
            # /clock follows the bag's time, advanced with the wall clock x rate (1 ms
            # steps), so the node's deadlines and latencies are in bag time.
            clock = Clock()
            sim = t0 + int((time.monotonic() - start) * rate * 1e9)
            clock.clock.sec, clock.clock.nanosec = divmod(sim, 10**9)
            clock_pub.publish(clock)
        for k, f in enumerate(contents.frames):
            due = start + (f.time_ns - t0) / 1e9 / rate
            while time.monotonic() < due:
                tick()
                rclpy.spin_once(node, timeout_sec=max(0.0, min(due - time.monotonic(), 0.001)))
            tick()
            pubs[f.camera].publish(_to_rclpy(f.msg))
            if progress:
                progress(k + 1, len(contents.frames))
        # Let time run on past the last deadline so pending frames end.
        end = time.monotonic() + settle_s
        while time.monotonic() < end and len(received) < len(contents.frames):
            tick()
            rclpy.spin_once(node, timeout_sec=0.001)
    except BagError as e:
        errors.append(str(e))
    finally:
        node.destroy_node()
        rclpy.shutdown()
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    rows = []
    for f in contents.frames:
        m = received.get((f.camera, f.stamp_ns))
        if m is None:
            rows.append({'camera': f.camera, 'outcome': 'dropped', 'reason': 'lost',
                         'depth': 0, 'correct': False, 'latency_ms': None})
            continue
        outcome = {DetectionArray.ON_TIME: 'on_time', DetectionArray.LATE: 'late'}.get(
            m.outcome, 'dropped')
        label = m.detections[0].label if m.detections else None
        rows.append({'camera': f.camera, 'outcome': outcome, 'reason': m.reason,
                     'depth': m.detections[0].depth_reached if m.detections else 0,
                     'correct': bool(outcome == 'on_time' and f.label is not None and
                                     label == f.label),
                     'latency_ms': m.latency.sec * 1e3 + m.latency.nanosec * 1e-6
                     if outcome != 'dropped' else None,
                     't': (f.time_ns - contents.frames[0].time_ns) / 1e9})
    return report(bag, 'dds', policy, contents, rows, errors), rows, record


def _to_rclpy(msg):
    """Copy a rosbags image message into the rclpy message of the same type."""
    from array import array

    from sensor_msgs.msg import CompressedImage, Image
    if hasattr(msg, 'encoding'):
        out = Image(height=int(msg.height), width=int(msg.width), encoding=msg.encoding,
                    is_bigendian=int(msg.is_bigendian), step=int(msg.step))
    else:
        out = CompressedImage(format=msg.format)
    out.header.frame_id = msg.header.frame_id
    out.header.stamp.sec, out.header.stamp.nanosec = msg.header.stamp.sec, \
        msg.header.stamp.nanosec
    out.data = array('B', np.asarray(msg.data, dtype=np.uint8).tobytes())
    return out
