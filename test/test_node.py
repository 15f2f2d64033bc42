"""
The node across processes: real rclpy + Fast DDS, the node started as the launch file does.

A camera (this process) publishes labelled sample frames on two topics; the node (another
process) classifies them; this process checks that every frame gets exactly one outcome.
"""
from array import array
import os
import subprocess
import time

from anytime_infer.demo import frame_message, load_samples, node_command, play
from node_helpers import malformed_image, set_parameters
import numpy as np
import pytest

pytestmark = pytest.mark.slow
TOPICS = ['camera_front/image_raw', 'camera_rear/image_raw']
REMAPS = ['-r', 'camera_front/image_raw:=/test/front/image_raw',
          '-r', 'camera_rear/image_raw:=/test/rear/image_raw']
REMAPPED = ['/test/front/image_raw', '/test/rear/image_raw']
# Light load: a deadline far above both the work (~3 ms a frame) and the time the node
# waits for a core on a shared machine (p99 response times of 0.15-0.5 s were seen beside a
# CPU hog and other test runs; a short probe of it did not predict the next seconds).
# Whether a tight deadline holds is this machine's speed: the benchmarks measure that.
LIGHT_DEADLINE_MS = 1000.0


def launch_like_command(repo_root, extra=()):
    """Build the command of launch/anytime_infer.launch.py: executable, params, remaps."""
    params = os.path.join(repo_root, 'config', 'anytime_infer.yaml')
    # Reliable images: this checks that every frame the node receives ends in one outcome;
    # best-effort transport losses are measured apart (anytime-infer bench-node).
    return node_command(params, ['-p', f'deadline_ms:={LIGHT_DEADLINE_MS}',
                                 '-p', 'qos_depth:=1000',
                                 '-p', 'qos_reliability:=reliable', *extra] + REMAPS)


@pytest.fixture(scope='module')
def ros():
    import rclpy
    rclpy.init()
    node = rclpy.create_node('test_camera')
    yield node
    node.destroy_node()
    rclpy.shutdown()


@pytest.fixture(scope='module')
def node_process():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(launch_like_command(repo), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    yield proc
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    print(out[-3000:])
    assert proc.returncode in (0, -15), f'node exited with {proc.returncode}:\n{out[-2000:]}'


def sample_index(tally, topics, n: int) -> dict:
    """Map each sent (topic, stamp) to the sample it showed (``play``'s order)."""
    out = {}
    for c, topic in enumerate(topics):
        for i, stamp in enumerate(sorted(s for t, s in tally.sent if t == topic)):
            out[(topic, stamp)] = (i * len(topics) + c) % n
    return out


def full_depth_accuracy(samples, idx):
    """Accuracy of the bundled model at full depth on given samples (torch, this process)."""
    import torch

    from anytime_infer.model.data import Preprocess, to_tensor_batch
    from anytime_infer.model.store import load_model, resolve_model_dir
    net, card = load_model(resolve_model_dir('fashion_mnist'))
    x = to_tensor_batch(samples['images'][idx], Preprocess(**card['preprocess']))
    with torch.inference_mode():
        pred = net(x)[-1].argmax(1).numpy()
    return float((pred == samples['labels'][idx]).mean())


def jitter_deadline_ms(summary, floor_ms: float) -> float:
    """
    Return a deadline this machine can keep now: 3x the p99 light-load response time.

    Its response time at light load is mostly waiting for a core: a CPU hog or another
    process on a shared 2-core machine pushed the p99 from ~15 ms to over 60 ms.
    """
    return max(floor_ms, 3.0 * (summary['latency_ms_p99'] or floor_ms))


def test_light_load_every_frame_one_outcome_full_accuracy(ros, node_process):
    from anytime_infer.msg import DetectionArray
    samples = load_samples('fashion_mnist')
    tally = play(ros, REMAPPED, samples, rate_hz=10.0, frames=60, size=56, warmup_s=60.0,
                 reliable_images=True)
    s = tally.summary()
    print(f'light (deadline {LIGHT_DEADLINE_MS:.0f} ms)', s)
    assert s['sent'] == 120
    assert s['missing'] == 0 and s['duplicates'] == 0 and s['unknown'] == 0, s
    assert s['frame_id_mismatch'] == 0, s
    assert s['on_time'] >= 0.98 * s['sent'], s
    index = sample_index(tally, REMAPPED, len(samples['images']))
    on_time = [(k, m) for k, m in tally.outcomes.items() if m.outcome == DetectionArray.ON_TIME]
    depth = np.mean([m.detections[0].depth_reached for _, m in on_time])
    assert depth > 3.5, s
    got = np.array([m.detections[0].class_id for _, m in on_time])
    idx = [index[k] for k, _ in on_time]
    accuracy = float((got == samples['labels'][idx]).mean())
    expected = full_depth_accuracy(samples, idx)
    assert accuracy >= expected - 0.03, (accuracy, expected)


def test_the_node_reports_collector_pauses(ros, node_process):
    # Full collections of 60-120 ms in the node made 1-2 of the demo's 1200 frames late: the
    # node runs one at configure, and /diagnostics says how many collections ran since the
    # last status and how long the longest of each generation took.
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from anytime_infer.node.gcwatch import pause_keys
    seen, gc0 = {}, []

    def on_diag(msg):
        for st in msg.status:
            if st.name == 'anytime_infer: scheduler':
                seen.update({kv.key: kv.value for kv in st.values})
                gc0.append(float(seen.get('gc0_count', 0)))
    sub = ros.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 10)
    try:
        # Frames to work on (the node collects its young objects as it makes them).
        play(ros, REMAPPED, load_samples('fashion_mnist'), rate_hz=20.0, frames=40, size=56,
             warmup_s=60.0, reliable_images=True)
        end = time.monotonic() + 30.0
        while time.monotonic() < end and sum(gc0) < 1:
            rclpy.spin_once(ros, timeout_sec=0.1)
    finally:
        ros.destroy_subscription(sub)
    assert set(pause_keys()) <= set(seen), seen
    assert all(float(seen[k]) >= 0.0 for k in pause_keys())
    assert sum(gc0) >= 1, seen          # collections are counted (summed over the statuses)


# Overload is made relative to this machine's measured speed, not by a fixed frame rate
# (at a fixed 2 x 250 Hz a busy machine's Python camera could not overload the node): a
# test-only slower copy of the bundled model (its input upscaled 3x: every conv costs ~9x)
# whose stage times are measured here, a frame rate for LOAD x its full-depth capacity, and
# a deadline that fits full depth at light load.
SLOW_SCALE = 3
LOAD = 3.0
SLOW_CAMERAS = ['/slow/front/image_raw', '/slow/rear/image_raw']


@pytest.fixture(scope='module')
def slow_model(tmp_path_factory):
    """Make a copy of fashion_mnist with a 3x input, its stage latencies measured now."""
    import json
    import shutil

    import torch

    from anytime_infer.model.calibrate import measure_latency
    from anytime_infer.model.store import load_model, resolve_model_dir
    src = resolve_model_dir('fashion_mnist')
    folder = str(tmp_path_factory.mktemp('slow_model') / 'fashion_mnist_x3')
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns('trace*', 'split*'))
    with open(os.path.join(folder, 'card.json')) as f:
        card = json.load(f)
    pre = card['preprocess']
    pre['height'], pre['width'] = SLOW_SCALE * pre['height'], SLOW_SCALE * pre['width']
    with open(os.path.join(folder, 'card.json'), 'w') as f:
        json.dump(card, f)
    with open(os.path.join(folder, 'profile.json')) as f:
        profile = json.load(f)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                 # as the node runs (torch_threads: 1)
    try:
        net, _ = load_model(folder)
        profile['latency'] = measure_latency(
            net, (pre['channels'], pre['height'], pre['width']), torch.device('cpu'),
            batches=(1, 2, 4), runs=15, warmup_s=0.3)
    finally:
        torch.set_num_threads(threads)
    profile['threads'] = 1
    with open(os.path.join(folder, 'profile.json'), 'w') as f:
        json.dump(profile, f)
    # The fastest full-depth run seen: what the node can do at best. A rate of LOAD x that
    # capacity overloads it LOAD times at least, however busy the machine is (a busy one
    # runs slower: more overload, never less).
    full_s = sum(st['1']['quantiles_ms'][0] for st in profile['latency']) / 1000.0
    return folder, net, card, full_s


def _sec(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def predictions_by_depth(net, card, frames):
    """Return the class at every depth for frames converted exactly as the node does."""
    import torch

    from anytime_infer.model.data import Preprocess, to_tensor_batch
    from anytime_infer.node.imageconv import image_to_array, to_model_input
    pre = card['preprocess']
    crops = []
    for msg in frames:
        arr, enc = image_to_array(msg, 1 << 30)
        crops.append(to_model_input(arr, enc, pre['height'], pre['width'], pre['channels']))
    x = to_tensor_batch(np.stack(crops), Preprocess(**pre))
    out = []
    with torch.inference_mode():
        for k in range(1, net.num_stages + 1):
            x, logits = net.run_stage(k, x)
            out.append(logits.argmax(1).numpy())
    return np.stack(out, axis=1)          # (frames, depth)


def test_overload_lowers_depth_and_keeps_misses_low(ros, slow_model, repo_root):
    from anytime_infer.msg import SchedulerStatus
    folder, net, card, full_s = slow_model
    rate = min(max(LOAD / (2 * full_s), 10.0), 150.0)    # per camera: LOAD x capacity
    status = []
    # Its own node name and cameras: the module's node may be running beside it.
    ros.create_subscription(SchedulerStatus, '/anytime_infer_slow/status', status.append, 100)
    proc = subprocess.Popen(node_command(os.path.join(repo_root, 'config', 'anytime_infer.yaml'), [
        '-p', f'model:={folder}', '-p', 'device:=cpu', '-p', f'deadline_ms:={LIGHT_DEADLINE_MS}',
        '-p', 'status_rate_hz:=4.0', '-p', 'max_queue:=1000', '-p', 'qos_depth:=1000',
        '-p', 'qos_reliability:=reliable', '-r', '__node:=anytime_infer_slow',
        '-r', 'camera_front/image_raw:=' + SLOW_CAMERAS[0],
        '-r', 'camera_rear/image_raw:=' + SLOW_CAMERAS[1]]),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        samples = load_samples('fashion_mnist')
        light = play(ros, SLOW_CAMERAS, samples, rate_hz=4.0, frames=16, size=56, warmup_s=60.0,
                     reliable_images=True)
        deadline_ms = jitter_deadline_ms(light.summary(), 10000.0 * full_s)
        set_parameters(ros, '/anytime_infer_slow', deadline_ms=deadline_ms)
        n_light = len(status)
        heavy = play(ros, SLOW_CAMERAS, samples, rate_hz=rate, frames=int(4.0 * rate), size=56,
                     reliable_images=True)
    finally:
        proc.terminate()
        log, _ = proc.communicate(timeout=30)
    lsum, hsum = light.summary(), heavy.summary()
    # Overload, as the node saw it: frames it received per second (its own counters) x the
    # fastest full-depth time; a lower bound of the load.
    rates = [(b.frames_received - a.frames_received) /
             max(_sec(b.header.stamp) - _sec(a.header.stamp), 1e-3)
             for a, b in zip(status[n_light:], status[n_light + 4:])]
    load = max(rates, default=0.0) * full_s
    print(f'full depth {1000 * full_s:.1f} ms (fastest), {rate:.0f} Hz x 2, deadline '
          f'{deadline_ms:.0f} ms, load at least {load:.2f}')
    print('light', lsum)
    print('heavy', hsum)
    assert load >= 1.5, f'the camera did not overload the node (load {load:.2f})'
    assert lsum['missing'] == 0, lsum
    assert hsum['missing'] == 0 and hsum['duplicates'] == 0, hsum
    assert hsum['on_time'] + hsum['late'] + hsum['dropped'] == hsum['sent']
    assert hsum['mean_depth'] < lsum['mean_depth'] - 0.5, (lsum, hsum)
    # Misses stay low: the overload is shed (lower depth, infeasible frames dropped at once)
    # rather than answered late (the executor's deadline guard absorbs stage overruns).
    assert hsum['late'] <= 0.01 * hsum['sent'], hsum
    # Every answer is what the model says at the depth reached (no mixed-up frames).
    index = sample_index(heavy, SLOW_CAMERAS, len(samples['images']))
    frames, depths, classes = [], [], []
    for key, m in heavy.outcomes.items():
        if not m.detections:
            continue
        frames.append(frame_message(samples['images'][index[key]], 0, 'x', 56))
        depths.append(m.detections[0].depth_reached)
        classes.append(m.detections[0].class_id)
    pred = predictions_by_depth(net, card, frames)
    agree = np.mean([pred[j, d - 1] == cls for j, (d, cls) in enumerate(zip(depths, classes))])
    assert agree >= 0.97, f'only {agree:.3f} of the answers match the model at their depth'
    assert proc.returncode in (0, -15), log[-2000:]


def _bad_messages():
    good = frame_message(np.zeros((28, 28, 1), np.uint8), 0, 'x')

    def img(**kw):
        return malformed_image(good, **kw)
    return {
        'encoding': img(encoding='yuv422'),
        'step': img(step=10),
        'size': img(height=40),
        'empty': img(data=array('B')),
        'truncated': img(data=array('B', bytes(100))),
        'huge': img(height=20000, width=20000, step=60000),
        'future': img(), 'past': img(),
    }


def test_bad_input_is_dropped_counted_and_the_node_goes_on(ros, node_process):
    import rclpy
    from anytime_infer.msg import DetectionArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    got = {}
    ros.create_subscription(
        DetectionArray, '/test/front/detections',
        lambda m: got.setdefault(m.header.frame_id, m),
        QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    pub = ros.create_publisher(Image, '/test/front/image_raw',
                               QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    end = time.monotonic() + 30
    while not pub.get_subscription_count() and time.monotonic() < end:
        rclpy.spin_once(ros, timeout_sec=0.05)
    bad = _bad_messages()
    now = ros.get_clock().now().nanoseconds
    for name, msg in bad.items():
        msg.header.frame_id = 'bad_' + name
        offset = {'future': 3600, 'past': -3600}.get(name, 0)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now + offset * 10**9, 10**9)
        pub.publish(msg)
        rclpy.spin_once(ros, timeout_sec=0.05)
    good = frame_message(load_samples('fashion_mnist')['images'][0],
                         ros.get_clock().now().nanoseconds, 'good_after', 56)
    pub.publish(good)
    end = time.monotonic() + 20
    while len(got) < len(bad) + 1 and time.monotonic() < end:
        rclpy.spin_once(ros, timeout_sec=0.05)
    for name in bad:
        m = got.get('bad_' + name)
        assert m is not None, f'no outcome for bad input {name!r}'
        assert m.outcome == DetectionArray.DROPPED and m.reason == 'bad_input', (name, m)
    assert 'good_after' in got and got['good_after'].outcome == DetectionArray.ON_TIME
    assert node_process.poll() is None, 'the node died'


def test_launch_file_with_launch_ros():
    pytest.importorskip('launch', reason='launch / launch_ros are not on PyPI: the launch '
                        'file runs on a ROS 2 install; the other tests here start the node '
                        'exactly as it does (same executable, params file, remaps)')
    pytest.importorskip('launch_ros', reason='launch_ros is not installable here')
    import launch
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = PythonLaunchDescriptionSource(os.path.join(repo, 'launch',
                                                     'anytime_infer.launch.py'))
    ld = src.get_launch_description(launch.LaunchContext())
    assert ld.entities


def test_bad_parameter_is_refused_with_a_reason(repo_root):
    cmd = launch_like_command(repo_root, ['-p', 'policy:=fastest'])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert 'policy must be one of' in proc.stdout + proc.stderr
