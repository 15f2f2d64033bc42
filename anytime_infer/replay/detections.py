"""
The detections a replay writes: ``DIR/detections.mcap`` (and the rosbag2 folder beside it).

Over DDS the node's own messages are recorded. A deterministic replay builds for every
frame the ``DetectionArray`` the node would publish (``detection_array_cdr``): the
frame's header copied, outcome and reason, one ``Detection`` for the whole frame (class,
label, calibrated confidence, depth reached, stages, expected accuracy, roi), deadline
and latency on the bag's clock. Messages are CDR-serialised with rosbags (pure Python,
no ROS middleware), so a worker process needs no rclpy.
"""
import os
import shutil
from typing import List, NamedTuple, Optional, Tuple

from anytime_infer.replay.bags import DETECTIONS

OUTCOMES = {'on_time': 0, 'late': 1, 'dropped': 2}   # DetectionArray.ON_TIME, LATE, DROPPED


class Result(NamedTuple):
    """The one Detection of a whole-frame result."""

    class_id: int
    label: str
    confidence: float
    width: int
    height: int
    depth: int
    num_stages: int
    expected_accuracy: float


def detection_array_cdr(store, header, outcome: str, reason: str, deadline_ns: int,
                        latency_ns: int, result: Optional[Result]) -> bytes:
    """Serialise the DetectionArray the node publishes for one frame (rosbags CDR)."""
    t = store.types
    time_t, dur_t = t['builtin_interfaces/msg/Time'], t['builtin_interfaces/msg/Duration']
    hdr = t['std_msgs/msg/Header'](
        stamp=time_t(sec=int(header.stamp.sec), nanosec=int(header.stamp.nanosec)),
        frame_id=str(header.frame_id))
    dets = []
    if result is not None:
        roi = t['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0,
                                                    height=int(result.height),
                                                    width=int(result.width),
                                                    do_rectify=False)
        dets.append(t['anytime_infer/msg/Detection'](
            class_id=int(result.class_id), label=str(result.label),
            confidence=float(result.confidence), roi=roi, depth_reached=int(result.depth),
            num_stages=int(result.num_stages),
            expected_accuracy=float(result.expected_accuracy)))
    sec, nsec = divmod(int(deadline_ns), 10**9)
    lsec, lnsec = divmod(max(int(latency_ns), 0), 10**9)
    msg = t[DETECTIONS](header=hdr, detections=dets, deadline=time_t(sec=sec, nanosec=nsec),
                        latency=dur_t(sec=lsec, nanosec=lnsec), outcome=OUTCOMES[outcome],
                        reason=reason)
    return bytes(store.serialize_cdr(msg, DETECTIONS))


def read_detections(path: str) -> List[Tuple[str, int, object]]:
    """Read (topic, time ns, DetectionArray) from a detections bag (folder or .mcap)."""
    from pathlib import Path

    from anytime_infer.bagtypes import project_typestore
    from rosbags.highlevel import AnyReader
    with AnyReader([Path(path)], default_typestore=project_typestore()) as r:
        return [(c.topic, t, r.deserialize(raw, c.msgtype)) for c, t, raw in r.messages()]


def write_detections(path: str, record: List[Tuple[str, int, bytes]]) -> None:
    """Write the node's outputs (raw CDR) into an mcap rosbag2 bag any ROS user can open."""
    from anytime_infer.bagtypes import project_typestore
    from rosbags.rosbag2 import StoragePlugin, Writer
    folder = path[:-len('.mcap')] if path.endswith('.mcap') else path
    if os.path.exists(folder):
        shutil.rmtree(folder)
    store = project_typestore()
    with Writer(folder, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {}
        for topic, t, raw in record:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, DETECTIONS, typestore=store)
            w.write(conns[topic], t, raw)
    # rosbags names the file after its bag folder; DIR/detections.mcap is the same file,
    # for tools that open a single mcap (Foxglove, ros2 bag with the mcap plugin).
    inner = os.path.join(folder, os.path.basename(folder) + '.mcap')
    if os.path.exists(inner):
        if os.path.exists(path):
            os.remove(path)
        shutil.copyfile(inner, path)
