"""The node in-process: lifecycle transitions, regions of interest, debug image, status."""
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def ros_pair():
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from anytime_infer.node.anytime_infer_node import AnytimeInferNode
    rclpy.init()
    node = AnytimeInferNode(parameter_overrides=[
        Parameter('autostart', value=False),
        Parameter('model', value='traffic_lights'),
        Parameter('camera_topics', value=['lc/cam/image_raw']),
        Parameter('roi_topics', value=['lc/cam/rois']),
        Parameter('debug_image', value=True),
        Parameter('status_rate_hz', value=20.0),
        Parameter('deadline_ms', value=500.0)])
    peer = rclpy.create_node('lc_peer')
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    ex.add_node(peer)
    yield node, peer, ex
    if node.executor_ is not None:
        node.executor_.stop()
    ex.shutdown()
    node.destroy_node()
    peer.destroy_node()
    rclpy.shutdown()


def spin_until(ex, pred, timeout=20.0):
    end = time.monotonic() + timeout
    while not pred() and time.monotonic() < end:
        ex.spin_once(timeout_sec=0.02)
    return pred()


def test_lifecycle_rois_debug_image_and_status(ros_pair):
    from anytime_infer.demo import frame_message, load_samples
    from anytime_infer.msg import Detection, DetectionArray, SchedulerStatus
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    node, peer, ex = ros_pair
    assert node.executor_ is None, 'autostart false must not load the model'
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.executor_ is not None
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert len(node._subs) == 2, 'activate subscribes to the camera and its regions'

    got, images, status = [], [], []
    peer.create_subscription(DetectionArray, 'lc/cam/detections', got.append, 10)
    peer.create_subscription(Image, 'lc/cam/detections/image', images.append, 10)
    peer.create_subscription(SchedulerStatus, '/anytime_infer/status', status.append, 10)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    roi_pub = peer.create_publisher(DetectionArray, 'lc/cam/rois', reliable)
    img_pub = peer.create_publisher(Image, 'lc/cam/image_raw', reliable)
    assert spin_until(ex, lambda: img_pub.get_subscription_count() and
                      roi_pub.get_subscription_count())

    # A 128x64 frame holding two traffic-light crops side by side, and their regions.
    samples = load_samples('traffic_lights')
    frame = np.concatenate([samples['images'][0], samples['images'][1]], axis=1)
    stamp = peer.get_clock().now().nanoseconds
    rois = DetectionArray()
    rois.header.stamp.sec, rois.header.stamp.nanosec = divmod(stamp, 10**9)
    for x in (0, 32):
        d = Detection()
        d.roi.x_offset, d.roi.y_offset, d.roi.width, d.roi.height = x, 0, 32, 64
        rois.detections.append(d)
    roi_pub.publish(rois)
    spin_until(ex, lambda: False, timeout=0.3)
    img_pub.publish(frame_message(frame, stamp, 'lc_cam'))
    assert spin_until(ex, lambda: got and images and status)
    out = got[0]
    assert out.outcome == DetectionArray.ON_TIME
    assert [d.roi.x_offset for d in out.detections] == [0, 32]
    assert [d.class_id for d in out.detections] == [int(samples['labels'][0]),
                                                    int(samples['labels'][1])]
    assert images[0].encoding == 'rgb8' and images[0].width == 64
    # A status may be published while the frame is still in flight (received, not ended).
    assert spin_until(ex, lambda: status[-1].frames_received >= 1 and
                      status[-1].queue_length == 0)
    assert status[-1].frames_on_time == 1 and status[-1].policy == 'imprecise_dp'

    # A frame with no regions for it: published with nothing to classify.
    img_pub.publish(frame_message(frame, stamp + 5 * 10**9, 'lc_cam'))
    assert spin_until(ex, lambda: len(got) == 2)
    assert got[1].outcome == DetectionArray.ON_TIME and not got[1].detections

    # Bad values are refused with a reason; static ones wait for a new configure.
    res = node.set_parameters([Parameter('deadline_ms', value=-5.0)])[0]
    assert not res.successful and 'deadline_ms' in res.reason
    res = node.set_parameters([Parameter('model', value='fashion_mnist')])[0]
    assert not res.successful and 'configure' in res.reason

    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert not node._subs
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert node.executor_ is None


def test_deadlines_follow_sim_time_from_clock():
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    from anytime_infer.demo import frame_message, load_samples
    from anytime_infer.msg import DetectionArray
    from anytime_infer.node.anytime_infer_node import AnytimeInferNode
    rclpy.init()
    node = AnytimeInferNode(parameter_overrides=[
        Parameter('use_sim_time', value=True),
        Parameter('model', value='traffic_lights'),
        Parameter('camera_topics', value=['st/cam/image_raw']),
        Parameter('deadline_ms', value=250.0)])
    peer = rclpy.create_node('st_peer')
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    ex.add_node(peer)
    try:
        got = []
        peer.create_subscription(DetectionArray, 'st/cam/detections', got.append, 10)
        clock_pub = peer.create_publisher(Clock, '/clock', 10)
        img_pub = peer.create_publisher(Image, 'st/cam/image_raw',
                                        QoSProfile(depth=5,
                                                   reliability=ReliabilityPolicy.RELIABLE))
        sim_now = 1_000_000 * 10**9            # a bag's clock, far from wall time
        clock = Clock()
        clock.clock.sec, clock.clock.nanosec = divmod(sim_now, 10**9)
        assert spin_until(ex, lambda: (clock_pub.publish(clock) or True) and
                          node.get_clock().now().nanoseconds == sim_now and
                          img_pub.get_subscription_count())
        img = load_samples('traffic_lights')['images'][0]
        img_pub.publish(frame_message(img, sim_now, 'st_cam'))
        assert spin_until(ex, lambda: got)
        out = got[0]
        deadline = out.deadline.sec * 10**9 + out.deadline.nanosec
        assert deadline == sim_now + 250 * 10**6, 'deadline not on the ROS (sim) clock'
        assert out.outcome != DetectionArray.DROPPED, out
    finally:
        node.executor_.stop()
        ex.shutdown()
        node.destroy_node()
        peer.destroy_node()
        rclpy.shutdown()
