"""The package's own messages: fields, serialization, DDS across processes, mcap bags."""
import os
import subprocess
import sys
import textwrap
import time

from anytime_infer.msg import Detection, DetectionArray, SchedulerStatus
import pytest
from rclpy.serialization import deserialize_message, serialize_message


def _sample_array() -> DetectionArray:
    msg = DetectionArray()
    msg.header.frame_id = 'cam_front'
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1700000000, 123456789
    det = Detection()
    det.class_id, det.label, det.confidence = 3, 'dress', 0.875
    det.roi.x_offset, det.roi.y_offset, det.roi.width, det.roi.height = 1, 2, 28, 28
    det.depth_reached, det.num_stages, det.expected_accuracy = 2, 4, 0.8125
    msg.detections = [det]
    msg.deadline.sec, msg.deadline.nanosec = 1700000000, 200000000
    msg.latency.nanosec = 15000000
    msg.outcome = DetectionArray.LATE
    return msg


def test_outcome_constants_are_distinct():
    assert {DetectionArray.ON_TIME, DetectionArray.LATE, DetectionArray.DROPPED} == {0, 1, 2}


def test_detection_array_round_trips_through_serialization():
    msg = _sample_array()
    back = deserialize_message(serialize_message(msg), DetectionArray)
    assert back == msg
    assert back.detections[0].label == 'dress'
    assert back.header.stamp.nanosec == 123456789


def test_scheduler_status_round_trips_through_serialization():
    msg = SchedulerStatus(policy='imprecise_dp', device='cpu', frames_received=10,
                          frames_on_time=7, frames_late=1, frames_dropped=2,
                          drop_reasons=['infeasible', 'bad_input'], drop_counts=[1, 1],
                          queue_length=3, mean_depth=2.5, estimated_load=1.25)
    back = deserialize_message(serialize_message(msg), SchedulerStatus)
    assert back == msg


def test_rosbags_writes_and_reads_messages_in_mcap(tmp_path, repo_root):
    from anytime_infer.bagtypes import project_typestore
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    store = project_typestore()
    bag = tmp_path / 'bag'
    msg = _sample_array()
    raw = serialize_message(msg)
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection('/cam/detections', 'anytime_infer/msg/DetectionArray',
                                     typestore=store)
        writer.write(conn, 42, raw)
    with Reader(bag) as reader:
        rows = list(reader.messages())
    assert len(rows) == 1
    conn, stamp, data = rows[0]
    assert conn.msgtype == 'anytime_infer/msg/DetectionArray' and stamp == 42
    decoded = store.deserialize_cdr(data, conn.msgtype)
    assert decoded.detections[0].label == 'dress'
    assert decoded.header.frame_id == 'cam_front'
    # The bytes rosbags stored are what rclpy reads too.
    assert deserialize_message(bytes(data), DetectionArray) == msg


PUBLISHER = textwrap.dedent("""
    import sys, time
    import rclpy
    from anytime_infer.msg import DetectionArray, Detection
    rclpy.init()
    node = rclpy.create_node('test_publisher')
    pub = node.create_publisher(DetectionArray, 'test_detections', 10)
    deadline = time.monotonic() + 20
    i = 0
    while time.monotonic() < deadline:
        msg = DetectionArray()
        msg.header.frame_id = 'cam_%d' % i
        msg.detections = [Detection(label='shirt', class_id=6, depth_reached=3, num_stages=4)]
        pub.publish(msg)
        i += 1
        rclpy.spin_once(node, timeout_sec=0.05)
""")


@pytest.mark.slow
def test_detection_array_crosses_processes_over_fast_dds():
    import rclpy

    proc = subprocess.Popen([sys.executable, '-c', PUBLISHER], env=dict(os.environ))
    try:
        rclpy.init()
        node = rclpy.create_node('test_listener')
        got = []
        node.create_subscription(DetectionArray, 'test_detections', got.append, 10)
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        node.destroy_node()
        rclpy.shutdown()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert got, 'no DetectionArray arrived from the other process'
    assert got[0].header.frame_id.startswith('cam_')
    assert got[0].detections[0].label == 'shirt' and got[0].detections[0].depth_reached == 3
