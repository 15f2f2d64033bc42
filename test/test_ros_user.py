"""
The node as a ROS user meets it (issue 15.1, 15.2, 16.6).

`make setup` lays `.venv` out as a ROS prefix (what `ros2 run` / `ros2 launch` look for);
the node started from there, as `ros2 run` starts it, honours a namespace, a camera remap,
the shipped parameters file and `use_sim_time`, all through `--ros-args`.
"""
import os
import signal
import subprocess
import sys
import sysconfig
import time

import pytest
from ros_user import get_parameters, kill_group, NODE, read_log, signal_node, spin_until, \
    start_node
import yaml

PREFIX = sys.prefix
SIM_T = 1000.5          # /clock while frames are sent (s)


def sourced_ros_install(root) -> dict:
    """
    Return the environment of a shell that sourced a ROS install and then the venv prefix.

    The stand-in install at ``root`` has an ``rclpy`` (another Python's, as /opt/ros has)
    on PYTHONPATH that refuses to import, and a library folder on LD_LIBRARY_PATH.
    """
    site = root / 'lib' / 'python3.12' / 'site-packages' / 'rclpy'
    site.mkdir(parents=True)
    (site / '__init__.py').write_text(
        "raise ImportError('the sourced ROS install shadowed the venv rclpy')\n")
    env = dict(os.environ)
    env.pop('_ROS_WHEELS_BOOTSTRAP_COMPLETE', None)   # a fresh shell
    env.update(PYTHONPATH=str(site.parent), LD_LIBRARY_PATH=str(root / 'lib'),
               AMENT_PREFIX_PATH=os.pathsep.join([PREFIX, str(root)]),
               CMAKE_PREFIX_PATH=str(root))
    return env


def test_venv_environment_drops_a_sourced_install_paths():
    from anytime_infer.ros_env import BOOTSTRAPPED, venv_ros_environment
    ros = '/opt/ros/jazzy'
    env = {'AMENT_PREFIX_PATH': f'{PREFIX}:{ros}', 'PYTHONPATH':
           f'{ros}/lib/python3.12/site-packages:/home/me/tools', 'LD_LIBRARY_PATH':
           f'{ros}/opt/rviz_ogre_vendor/lib:{ros}/lib:/usr/local/cuda/lib64', BOOTSTRAPPED: '1'}
    out = venv_ros_environment(env, PREFIX)
    assert out['PYTHONPATH'] == '/home/me/tools'
    assert out['LD_LIBRARY_PATH'] == '/usr/local/cuda/lib64'
    assert BOOTSTRAPPED not in out and out['AMENT_PREFIX_PATH'] == env['AMENT_PREFIX_PATH']
    assert venv_ros_environment({'AMENT_PREFIX_PATH': PREFIX, 'PYTHONPATH': '/x'},
                                PREFIX) is None
    assert venv_ros_environment({'AMENT_PREFIX_PATH': f'{PREFIX}:{ros}'}, PREFIX) is None


def test_venv_is_a_ros_prefix_for_the_package(repo_root):
    for prog in ('anytime_infer_node', 'anytime-infer'):
        path = os.path.join(PREFIX, 'lib', 'anytime_infer', prog)
        assert os.path.isfile(path) and os.access(path, os.X_OK), f'{path} (make setup)'
        with open(path) as f:
            interpreter = f.readline()[2:].strip()
        # launch_ros runs the file directly: its #! must be a python that has our packages.
        assert os.path.realpath(interpreter) == os.path.realpath(sys.executable) \
            or interpreter == sys.executable, interpreter
    assert os.path.isfile(os.path.join(PREFIX, 'share', 'ament_index', 'resource_index',
                                       'packages', 'anytime_infer'))
    share = os.path.join(PREFIX, 'share', 'anytime_infer')
    for rel in ('package.xml', 'launch/anytime_infer.launch.py', 'config/anytime_infer.yaml'):
        assert os.path.isfile(os.path.join(share, rel)), rel
        with open(os.path.join(share, rel)) as a, open(os.path.join(repo_root, rel)) as b:
            assert a.read() == b.read(), f'{rel} in the prefix is stale: run make setup'
    from ament_index_python.packages import get_package_prefix, get_package_share_directory
    env_prefix = os.environ.get('AMENT_PREFIX_PATH', '')
    if PREFIX in env_prefix.split(os.pathsep):
        assert get_package_prefix('anytime_infer') == PREFIX
        assert get_package_share_directory('anytime_infer') == share
    # The repo's sources are the ones imported (editable); only messages in site-packages.
    site = os.path.join(sysconfig.get_paths()['purelib'], 'anytime_infer')
    assert not os.path.exists(os.path.join(site, 'executor.py')), 'a copy shadows the repo'
    import anytime_infer.executor
    import anytime_infer.msg
    assert anytime_infer.executor.__file__.startswith(repo_root)
    assert anytime_infer.msg.__file__.startswith(site)
    out = subprocess.run([os.path.join(PREFIX, 'lib', 'anytime_infer', 'anytime-infer'),
                          '--help'], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and 'usage: anytime-infer' in out.stdout, out.stderr


@pytest.fixture(scope='module')
def ros():
    import rclpy
    rclpy.init()
    node = rclpy.create_node('ros_user_test')
    yield node
    node.destroy_node()
    rclpy.shutdown()


@pytest.mark.slow
def test_prefix_node_under_namespace_remap_params_file_and_sim_time(ros, repo_root, tmp_path):
    """
    `ros2 run anytime_infer anytime_infer_node --ros-args ...` as a ROS user types it.

    In a shell that sourced a ROS install and then put the venv first on AMENT_PREFIX_PATH.
    """
    from anytime_infer.camera_player import frame_message
    from anytime_infer.msg import DetectionArray, SchedulerStatus
    from builtin_interfaces.msg import Time
    from lifecycle_msgs.srv import GetState
    import numpy as np
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    params = os.path.join(repo_root, 'config', 'anytime_infer.yaml')
    with open(params) as f:
        shipped = next(iter(yaml.safe_load(f).values()))['ros__parameters']
    assert shipped['deadline_ms'] != 100.0, 'the test needs a value unlike the default'
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    answers, statuses = [], []
    subs = [ros.create_subscription(DetectionArray, '/car/front/detections', answers.append,
                                    reliable),
            ros.create_subscription(SchedulerStatus, '/car/anytime_infer/status',
                                    statuses.append, 10)]
    cam = ros.create_publisher(Image, '/car/front/image_raw', reliable)
    clock_pub = ros.create_publisher(Clock, '/clock', 10)
    sim = {'t': SIM_T - 5.0, 'run': True}

    def tick():
        if sim['run']:
            sim['t'] = min(sim['t'] + 0.05, SIM_T)
        sec, nsec = divmod(int(round(sim['t'] * 1e9)), 1_000_000_000)
        clock_pub.publish(Clock(clock=Time(sec=sec, nanosec=nsec)))
    timer = ros.create_timer(0.05, tick)
    log = str(tmp_path / 'node.log')
    proc = start_node(['-r', '__ns:=/car', '-r', 'camera_front/image_raw:=/car/front/image_raw',
                       '--params-file', params, '-p', 'qos_reliability:=reliable',
                       '-p', 'use_sim_time:=true'], log, env=sourced_ros_install(tmp_path / 'ros'))
    try:
        # The status timer runs on sim time: a status at all shows /clock drives the node.
        assert spin_until(ros, lambda: bool(statuses) or proc.poll() is not None, 90), \
            'no /car/anytime_infer/status:\n' + read_log(log)[-2000:]
        assert proc.poll() is None, read_log(log)[-2000:]
        assert statuses[0].header.stamp.sec < SIM_T + 1, 'status not stamped on sim time'
        deadline_ms, topics, sim_time = get_parameters(
            ros, '/car/anytime_infer', ['deadline_ms', 'camera_topics', 'use_sim_time'])
        assert deadline_ms == shipped['deadline_ms'], 'the params file did not apply'
        assert topics == shipped['camera_topics']
        assert sim_time is True
        cli = ros.create_client(GetState, '/car/anytime_infer/get_state')
        assert cli.wait_for_service(timeout_sec=20)
        fut = cli.call_async(GetState.Request())
        rclpy.spin_until_future_complete(ros, fut, timeout_sec=10)
        assert fut.result().current_state.label == 'active'
        ros.destroy_client(cli)
        # Freeze sim time at SIM_T: every deadline is then exactly SIM_T + deadline_ms.
        sim['t'], sim['run'] = SIM_T, False
        spin_until(ros, lambda: False, 0.5)
        assert spin_until(ros, lambda: cam.get_subscription_count() > 0, 20)
        img = np.random.default_rng(0).integers(0, 255, (56, 56, 1), dtype=np.uint8)
        for i in range(5):
            cam.publish(frame_message(img, int(SIM_T * 1e9), f'front{i}'))
            spin_until(ros, lambda: False, 0.05)
        assert spin_until(ros, lambda: len(answers) >= 5, 20), \
            f'{len(answers)} of 5 answered on /car/front/detections:\n' + read_log(log)[-2000:]
        names = [n for n, _ in ros.get_topic_names_and_types()]
        assert '/car/camera_front/detections' not in names, 'answers beside the old topic'
        for a in answers:
            assert a.header.frame_id.startswith('front'), a.header
            assert a.outcome == DetectionArray.ON_TIME, (a.outcome, a.reason)
            deadline = a.deadline.sec + a.deadline.nanosec * 1e-9
            assert abs(deadline - (SIM_T + deadline_ms / 1000.0)) < 1e-3, deadline
        t_sig = time.monotonic()
        signal_node(proc, signal.SIGINT, group=True, twice=True)
        assert spin_until(ros, lambda: proc.poll() is not None, 15)
        print(f'stopped in {time.monotonic() - t_sig:.2f} s')
    finally:
        kill_group(proc)
        ros.destroy_timer(timer)
        for s in subs:
            ros.destroy_subscription(s)
        ros.destroy_publisher(cam)
        ros.destroy_publisher(clock_pub)
    out = read_log(log)
    assert proc.returncode == 0 and 'Traceback' not in out, out[-3000:]
    assert NODE in ' '.join(proc.args)
