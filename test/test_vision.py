"""
vision_msgs outputs (issue 15.5).

The conversion from our results is pure and tested everywhere; the messages and the
node's publishing path where vision_msgs is installed.
"""
import math
import os
import signal

from anytime_infer.executor import CropResult
from anytime_infer.node.vision import Box2D, detections_2d, label_map, region_box, \
    vision_msgs_available, VisionOutputs
import pytest
from ros_user import kill_group, read_log, signal_node, spin_until, start_node

NO_VISION_MSGS = 'vision_msgs not installed'


def _results():
    return [CropResult(3, 'dress', 0.8125, 2, 4, 0.9, (0, 0, 56, 56)),
            CropResult(7, 'sneaker', 0.25, 4, 4, 0.7, (10, 20, 31, 7))]


def test_region_box_is_center_and_size():
    assert region_box((0, 0, 56, 56)) == Box2D(28.0, 28.0, 56.0, 56.0)
    assert region_box((10, 20, 31, 7)) == Box2D(25.5, 23.5, 31.0, 7.0)


def test_detections_2d_one_per_result_label_and_calibrated_confidence():
    fields = detections_2d(_results())
    assert [f.class_id for f in fields] == ['dress', 'sneaker']
    assert [f.score for f in fields] == [0.8125, 0.25]
    assert fields[1].bbox == Box2D(25.5, 23.5, 31.0, 7.0)
    assert detections_2d([]) == []


def test_label_map_is_the_model_class_list():
    from anytime_infer.model.store import load_model, resolve_model_dir
    _, card = load_model(resolve_model_dir('fashion_mnist'))
    m = label_map(card['classes'])
    assert len(m) == len(card['classes']) and m[0] == (0, card['classes'][0])
    assert [i for i, _ in m] == list(range(len(m)))


def test_outputs_where_vision_msgs_is_missing_or_turned_off():
    """Missing: the node says so and goes on (no publisher); off: nothing is made."""
    import rclpy
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node('vision_outputs_test', context=ctx)
        before = len(list(node.publishers))
        assert VisionOutputs.create(node, False, ['/cam'], ['a', 'b']) is None
        out = VisionOutputs.create(node, True, ['/cam'], ['a', 'b'])
        if vision_msgs_available():
            assert out is not None and len(list(node.publishers)) == before + 2
            out.destroy()
        else:
            assert out is None
        assert len(list(node.publishers)) == before
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_messages_carry_the_fields():
    pytest.importorskip('vision_msgs', reason=NO_VISION_MSGS)
    from anytime_infer.node.vision import detection2d_array_msg, label_info_msg
    from std_msgs.msg import Header
    header = Header(frame_id='cam')
    header.stamp.sec = 12
    msg = detection2d_array_msg(header, detections_2d(_results()))
    assert msg.header.frame_id == 'cam' and msg.header.stamp.sec == 12
    assert len(msg.detections) == 2
    d = msg.detections[1]
    assert d.results[0].hypothesis.class_id == 'sneaker'
    assert math.isclose(d.results[0].hypothesis.score, 0.25)
    assert (d.bbox.center.position.x, d.bbox.center.position.y) == (25.5, 23.5)
    assert (d.bbox.size_x, d.bbox.size_y) == (31.0, 7.0)
    info = label_info_msg(['a', 'b'])
    assert [(c.class_id, c.class_name) for c in info.class_map] == [(0, 'a'), (1, 'b')]


@pytest.mark.slow
def test_node_publishes_detection2d_array_and_label_info(repo_root, tmp_path):
    pytest.importorskip('vision_msgs', reason=NO_VISION_MSGS)
    import numpy as np
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray, LabelInfo

    from anytime_infer.camera_player import frame_message
    from anytime_infer.msg import DetectionArray

    rclpy.init()
    ros = rclpy.create_node('vision_test')
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    ours, theirs, labels = {}, {}, []
    ros.create_subscription(DetectionArray, '/car/front/detections',
                            lambda m: ours.setdefault(m.header.frame_id, m), reliable)
    ros.create_subscription(Detection2DArray, '/car/front/detections_2d',
                            lambda m: theirs.setdefault(m.header.frame_id, m), reliable)
    ros.create_subscription(LabelInfo, '/car/anytime_infer/label_info', labels.append,
                            QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                       durability=DurabilityPolicy.TRANSIENT_LOCAL))
    cam = ros.create_publisher(Image, '/car/front/image_raw', reliable)
    log = str(tmp_path / 'node.log')
    proc = start_node(['-r', '__ns:=/car', '-r', 'camera_front/image_raw:=/car/front/image_raw',
                       '--params-file', os.path.join(repo_root, 'config', 'anytime_infer.yaml'),
                       '-p', 'qos_reliability:=reliable'], log)
    try:
        assert spin_until(ros, lambda: cam.get_subscription_count() > 0 and labels, 90), \
            read_log(log)[-2000:]
        img = np.random.default_rng(0).integers(0, 255, (56, 56, 1), dtype=np.uint8)
        for i in range(5):
            cam.publish(frame_message(img, ros.get_clock().now().nanoseconds, f'f{i}'))
            spin_until(ros, lambda: False, 0.05)
        assert spin_until(ros, lambda: len(ours) >= 5 and len(theirs) >= 5, 20)
        signal_node(proc, signal.SIGINT, group=True, twice=True)
        spin_until(ros, lambda: proc.poll() is not None, 15)
    finally:
        kill_group(proc)
        ros.destroy_node()
        rclpy.shutdown()
    assert proc.returncode == 0, read_log(log)[-2000:]
    assert len(labels[0].class_map) == 10
    for fid, a in ours.items():
        b = theirs[fid]
        assert b.header.stamp == a.header.stamp
        assert len(b.detections) == len(a.detections)
        for d, v in zip(a.detections, b.detections):
            assert v.results[0].hypothesis.class_id == d.label
            assert math.isclose(v.results[0].hypothesis.score, d.confidence, rel_tol=1e-6)
            assert v.bbox.size_x == d.roi.width and v.bbox.size_y == d.roi.height
