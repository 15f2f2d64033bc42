"""
Every parameter changed at run time through the node's real SetParameters service.

The node runs as its own process with the shipped parameters file and two remapped
cameras; this process sets parameters as ``ros2 param set`` does (so arrays arrive as
rclpy delivers them: ``array.array``), checks each value is applied between frames (seen in
the answers, the status or the graph) or refused with a reason that names the lifecycle
step it needs, and that a refused value leaves the old one in place.
"""
from node_helpers import CAMERAS, node_peer
import pytest

pytestmark = pytest.mark.slow
MS = 1_000_000


def _ns(t) -> int:
    return t.sec * 1_000_000_000 + t.nanosec


@pytest.fixture(scope='module')
def peer():
    with node_peer('param_tester', ['-p', 'deadline_ms:=50.0']) as p:
        yield p


def refused(peer, name, value, why):
    """Set a value that must be refused with ``why`` in the reason, the old one kept."""
    before = peer.get(name)
    ok, reason = peer.set_param(name, value)
    assert not ok and why in reason, (name, value, reason)
    assert peer.get(name) == before, f'{name} changed although refused'


def accepted(peer, name, value):
    ok, reason = peer.set_param(name, value)
    assert ok, (name, value, reason)
    got = peer.get(name)
    assert (list(got) if isinstance(value, list) else got) == value


def test_every_parameter_through_set_parameters(peer):
    from anytime_infer.msg import DetectionArray
    from rclpy.qos import ReliabilityPolicy
    assert peer.send(0) is not None and peer.send(1) is not None, 'no answer at start'

    # Per-camera arrays arrive as array.array; the length is bounded by the cameras.
    accepted(peer, 'weights', [2.0, 1.0])
    refused(peer, 'weights', [1.0, 1.0, 1.0], 'at most one per camera')
    refused(peer, 'weights', [-1.0, 1.0], 'weights must lie in')
    accepted(peer, 'deadline_from', 'stamp')          # deadline = stamp + relative, exact
    accepted(peer, 'deadlines_ms', [300.0, 0.0])
    refused(peer, 'deadlines_ms', [10.0, 10.0, 10.0], 'at most one per camera')
    refused(peer, 'deadlines_ms', [-1.0], 'deadlines_ms must lie in')
    refused(peer, 'deadline_from', 'sometime', 'deadline_from must be one of')
    accepted(peer, 'deadline_ms', 80.0)
    refused(peer, 'deadline_ms', 0.0, 'deadline_ms')
    for cam, rel_ms in ((0, 300), (1, 80)):
        out = peer.send(cam)
        assert out is not None, f'no answer on camera {cam}'
        assert abs(_ns(out.deadline) - _ns(out.header.stamp) - rel_ms * MS) < 2000, \
            (cam, _ns(out.deadline) - _ns(out.header.stamp))
    accepted(peer, 'deadline_from', 'arrival')

    # status_rate_hz: the timer is made again at once.
    accepted(peer, 'status_rate_hz', 5.0)
    t0 = peer.node.get_clock().now().nanoseconds
    peer.spin(3.0)
    n = sum(1 for s in peer.status if _ns(s.header.stamp) > t0)
    assert n >= 8, f'{n} status messages in 3 s at 5 Hz'
    refused(peer, 'status_rate_hz', 0.0, 'status_rate_hz')

    # policy and fixed_depth between decisions; anytime <-> plain needs a deactivate.
    accepted(peer, 'policy', 'greedy')
    st = peer.last_status(peer.node.get_clock().now().nanoseconds)
    assert st is not None and st.policy == 'greedy', st
    refused(peer, 'policy', 'fixed_depth', 'deactivate first')
    refused(peer, 'policy', 'oracle', 'policy must be one of')
    accepted(peer, 'fixed_depth', 3)           # used by fixed_depth only
    refused(peer, 'fixed_depth', 0, 'fixed_depth')

    # publish_dropped: a dropped frame is counted, published only when asked.
    accepted(peer, 'publish_dropped', False)
    t0 = peer.node.get_clock().now().nanoseconds
    before = peer.last_status(t0).frames_dropped
    msg, stamp = peer.frame(0, encoding='yuv422')
    peer.pubs[0].publish(msg)
    assert peer.spin_until(lambda: peer.status[-1].frames_dropped == before + 1)
    peer.spin(0.5)      # counted before it would be published: give it time to arrive
    assert (0, stamp) not in peer.answers, 'a drop was published'
    accepted(peer, 'publish_dropped', True)
    out = peer.send(0, encoding='yuv422')
    assert out is not None and out.outcome == DetectionArray.DROPPED, out
    assert out.reason == 'bad_input'

    # stamp_tolerance_s and max_image_pixels: from the next frame on.
    old_stamp = peer.node.get_clock().now().nanoseconds - 3_000_000_000
    accepted(peer, 'stamp_tolerance_s', 0.5)
    assert peer.send(0, stamp_ns=old_stamp).reason == 'bad_input'
    accepted(peer, 'stamp_tolerance_s', 10.0)
    assert peer.send(0, stamp_ns=old_stamp + 1).reason != 'bad_input'
    accepted(peer, 'max_image_pixels', 100)
    assert peer.send(0).reason == 'bad_input'
    accepted(peer, 'max_image_pixels', 16777216)
    assert peer.send(0).reason != 'bad_input'

    # debug_image: its publishers are made and destroyed at run time.
    image_topic = CAMERAS[0][:-len('/image_raw')] + '/detections/image'
    accepted(peer, 'debug_image', True)
    assert peer.spin_until(lambda: peer.endpoints(image_topic, 'pub') == 1)
    assert peer.spin_until(lambda: peer.send(0, timeout=2.0) and peer.images, 15.0)
    accepted(peer, 'debug_image', False)
    assert peer.spin_until(lambda: peer.endpoints(image_topic, 'pub') == 0)

    # Applied at once, no visible effect at light load: stored and kept.
    accepted(peer, 'max_queue', 5)
    accepted(peer, 'roi_max_age_s', 0.5)

    # Not while active: the reason names the step that applies them.
    refused(peer, 'qos_reliability', 'best_effort', 'at activate')
    refused(peer, 'qos_depth', 10, 'at activate')
    refused(peer, 'roi_topics', ['rois'], 'at activate')
    for name, value in (('model', 'traffic_lights'), ('device', 'cpu'),
                        ('camera_topics', ['a/image_raw']), ('percentile', 95),
                        ('torch_threads', 2), ('vision_msgs', False), ('planner', 'thread')):
        refused(peer, name, value, 'takes effect at configure')
    refused(peer, 'autostart', False, 'read once when the node starts')
    accepted(peer, 'model', 'fashion_mnist')        # unchanged: nothing to refuse

    # Inactive: subscription parameters and a plain policy; applied at activate.
    assert peer.transition('deactivate')
    accepted(peer, 'deadline_ms', 2000.0)     # depth 1 and 2 reachable on a busy machine
    accepted(peer, 'deadlines_ms', [0.0, 0.0])
    accepted(peer, 'qos_reliability', 'best_effort')
    accepted(peer, 'policy', 'fixed_depth')
    accepted(peer, 'fixed_depth', 1)
    refused(peer, 'fixed_depth', 9, 'exceeds the 4 stages')
    refused(peer, 'model', 'traffic_lights', 'takes effect at configure')
    assert peer.transition('activate')

    def camera_qos():
        return [i.qos_profile.reliability for i in peer.node.get_subscriptions_info_by_topic(
            CAMERAS[0]) if i.node_name == 'anytime_infer']
    assert peer.spin_until(lambda: camera_qos() == [ReliabilityPolicy.BEST_EFFORT]), \
        camera_qos()
    assert peer.spin_until(lambda: peer.send(0, timeout=2.0) is not None)
    assert peer.send(0).detections[0].depth_reached == 1
    accepted(peer, 'fixed_depth', 2)                 # plain -> plain: while active
    assert peer.send(0).detections[0].depth_reached == 2

    # Unconfigured: the cameras, checked against the per-camera arrays.
    assert peer.transition('deactivate') and peer.transition('cleanup')
    refused(peer, 'camera_topics', ['camera_front/image_raw'], 'weights has 2 entries')
    accepted(peer, 'weights', [1.0])
    accepted(peer, 'deadlines_ms', [0.0])
    accepted(peer, 'camera_topics', ['camera_front/image_raw'])
    accepted(peer, 'percentile', 95)
    refused(peer, 'planner', 'sometimes', 'planner must be one of')
    accepted(peer, 'planner', 'thread')
    accepted(peer, 'policy', 'imprecise_dp')      # planned in a thread: contingent
    peer.diagnostics.clear()
    assert peer.transition('configure') and peer.transition('activate')
    assert peer.spin_until(lambda: peer.endpoints(CAMERAS[0], 'sub') == 1 and
                           peer.endpoints(CAMERAS[1], 'sub') == 0)
    assert peer.spin_until(lambda: peer.send(0, timeout=2.0) is not None)

    # The executor built at configure plans in a thread: its /diagnostics say so.
    def planner_reported():
        for arr in peer.diagnostics[-5:]:
            for st in arr.status:
                if st.name == 'anytime_infer: executor':
                    return {kv.key: kv.value for kv in st.values}.get('planner')
        return None
    assert peer.spin_until(lambda: planner_reported() == 'thread'), planner_reported()
    assert peer.proc.poll() is None, 'the node died'
    assert peer.duplicates == 0
