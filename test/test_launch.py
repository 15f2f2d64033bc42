"""
The launch file through ROS 2's launch stack, with launch_pytest (issue 15.4).

`launch/anytime_infer.launch.py` with `namespace:=car`, a remapped front camera and the
shipped params file: the node comes up (status on /car/anytime_infer/status, the file's
deadline through GetParameters), frames on /car/front/image_raw are answered on
/car/front/detections, and launch's shutdown (SIGINT) ends it with exit code 0.

launch, launch_ros and launch_pytest are on no package registry here: where they do not
import this module is skipped with that reason (a ROS 2 install has them; note that its
launch_testing plugin needs pytest < 9 and launch_pytest fixtures pytest < 8.4).
"""
import importlib.util
import os

import pytest
import yaml

# Before anything of the launch stack is imported: a skip here never breaks collection.
NO_LAUNCH = 'no ROS 2 launch stack installed'
launch_pytest = pytest.importorskip('launch_pytest', reason=NO_LAUNCH)
pytest.importorskip('launch_ros', reason=NO_LAUNCH)

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAMS = os.path.join(REPO, 'config', 'anytime_infer.yaml')


def _load_launch_file():
    """Return the launch file's description and its node action."""
    import launch_ros.actions
    spec = importlib.util.spec_from_file_location(
        'anytime_infer_launch', os.path.join(REPO, 'launch', 'anytime_infer.launch.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    nodes = [e for e in ld.entities if isinstance(e, launch_ros.actions.Node)]
    assert len(nodes) == 1, ld.entities
    return ld, nodes[0]


@pytest.fixture(scope='module')
def launched():
    """Load the launch file: its entities, its node action, and a list for its output."""
    ld, node = _load_launch_file()
    return {'ld': ld, 'node': node, 'output': []}


@launch_pytest.fixture(scope='module')
def launch_description(launched):
    """`ros2 launch anytime_infer anytime_infer.launch.py namespace:=car camera_front:=...`."""
    import launch
    from launch.actions import RegisterEventHandler, SetLaunchConfiguration
    from launch.event_handlers import OnProcessIO
    out = launched['output']
    return launch.LaunchDescription([
        # Set before the file's DeclareLaunchArgument: as given on the command line.
        SetLaunchConfiguration('namespace', 'car'),
        SetLaunchConfiguration('camera_front', '/car/front/image_raw'),
        SetLaunchConfiguration('params_file', PARAMS),
        RegisterEventHandler(OnProcessIO(
            target_action=launched['node'],
            on_stdout=lambda ev: out.append(ev.text.decode(errors='replace')),
            on_stderr=lambda ev: out.append(ev.text.decode(errors='replace')))),
        *launched['ld'].entities,
        launch_pytest.actions.ReadyToTest(),
    ])


@pytest.mark.launch(fixture=launch_description)
def test_launch_file_namespace_remap_answers_then_sigint(launched):
    import numpy as np
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from ros_user import get_parameters, spin_until
    from sensor_msgs.msg import Image

    from anytime_infer.camera_player import frame_message
    from anytime_infer.msg import DetectionArray, SchedulerStatus

    with open(PARAMS) as f:
        shipped = next(iter(yaml.safe_load(f).values()))['ros__parameters']
    rclpy.init()
    try:
        ros = rclpy.create_node('launch_test_camera')
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        answers, statuses = {}, []
        ros.create_subscription(DetectionArray, '/car/front/detections',
                                lambda m: answers.setdefault(m.header.frame_id, m), reliable)
        ros.create_subscription(SchedulerStatus, '/car/anytime_infer/status', statuses.append,
                                10)
        cam = ros.create_publisher(Image, '/car/front/image_raw', reliable)
        assert spin_until(ros, lambda: bool(statuses), 90), ''.join(launched['output'])[-2000:]
        assert get_parameters(ros, '/car/anytime_infer', ['deadline_ms']) == \
            [shipped['deadline_ms']]
        # The file's camera QoS is best effort: publish until the node matched, then frames.
        assert spin_until(ros, lambda: cam.get_subscription_count() > 0, 20)
        img = np.random.default_rng(0).integers(0, 255, (56, 56, 1), dtype=np.uint8)
        for i in range(10):
            cam.publish(frame_message(img, ros.get_clock().now().nanoseconds, f'launch{i}'))
            spin_until(ros, lambda: False, 0.1)
        assert spin_until(ros, lambda: len(answers) >= 10, 20), \
            f'{len(answers)} of 10 answered on /car/front/detections'
        assert all(a.outcome != DetectionArray.DROPPED for a in answers.values())
        ros.destroy_node()
    finally:
        rclpy.shutdown()
    yield
    # After launch's shutdown, which stops the node with SIGINT.
    output = ''.join(launched['output'])
    assert launched['node'].return_code == 0, output[-3000:]
    assert 'Traceback' not in output, output[-3000:]
