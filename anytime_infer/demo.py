"""
The camera player and the demo: labelled frames on camera topics, outcomes scored.

``CameraPlayer`` publishes frames of a bundled model's sample set (its test split) on
several camera topics at a set rate, with header stamps and frame ids, and listens on
``<camera>/detections``: every frame is matched to its one outcome by stamp, and accuracy,
depth and latency are tallied. ``anytime-infer demo`` starts the real node as a separate
process (as the launch file does), plays frames through it and prints a report.
"""
from array import array
from dataclasses import dataclass, field
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np

SAMPLES = 'samples.npz'


def load_samples(model: str) -> Dict[str, np.ndarray]:
    """Load the bundled sample frames of a model: images (N, H, W, C), labels, classes."""
    from anytime_infer.model.store import resolve_model_dir
    path = os.path.join(resolve_model_dir(model), SAMPLES)
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path} missing (anytime-infer export-samples makes it)')
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def export_samples(model: str, count: int = 500, seed: int = 0) -> str:
    """Write ``count`` frames of the model's test split into its folder (for the demo)."""
    from anytime_infer.model.data import load_dataset
    from anytime_infer.model.store import load_model, resolve_model_dir
    folder = resolve_model_dir(model)
    _, card = load_model(folder)
    data = load_dataset(card['name'], seed=card['training']['seed'],
                        images=card.get('data', {}).get('images'))
    split = np.load(os.path.join(folder, 'split.npz'))
    test = split['test']
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(test, size=min(count, len(test)), replace=False))
    path = os.path.join(folder, SAMPLES)
    np.savez_compressed(path, images=data.images[pick], labels=data.labels[pick],
                        sample_ids=pick, classes=np.array(card['classes']))
    return path


def frame_message(img: np.ndarray, stamp_ns: int, frame_id: str, size: int = 0):
    """Make an rgb8 sensor_msgs/Image of a sample (grey is replicated to 3 channels)."""
    import cv2
    from sensor_msgs.msg import Image
    if size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
        img = img[..., None] if img.ndim == 2 else img
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    msg = Image(height=img.shape[0], width=img.shape[1], encoding='rgb8', is_bigendian=0,
                step=img.shape[1] * 3)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.data = array('B', np.ascontiguousarray(img).tobytes())
    return msg


@dataclass
class Tally:
    """Outcomes matched to published frames."""

    sent: Dict[tuple, int] = field(default_factory=dict)      # (topic, stamp) -> label
    outcomes: Dict[tuple, object] = field(default_factory=dict)
    duplicates: int = 0
    unknown: int = 0
    frame_id_mismatch: int = 0

    def add(self, key: tuple, msg, frame_id: str) -> None:
        """Record one DetectionArray."""
        if key not in self.sent:
            self.unknown += 1
        elif key in self.outcomes:
            self.duplicates += 1
        else:
            self.outcomes[key] = msg
            if msg.header.frame_id != frame_id:
                self.frame_id_mismatch += 1

    def summary(self) -> Dict:
        """Return counts, accuracy over all sent frames, mean depth, latency percentiles."""
        from anytime_infer.msg import DetectionArray
        outs = list(self.outcomes.values())
        by = {DetectionArray.ON_TIME: 0, DetectionArray.LATE: 0, DetectionArray.DROPPED: 0}
        reasons: Dict[str, int] = {}
        correct, depths, lat = 0, [], []
        for key, m in self.outcomes.items():
            by[m.outcome] = by.get(m.outcome, 0) + 1
            if m.outcome == DetectionArray.DROPPED:
                reasons[m.reason] = reasons.get(m.reason, 0) + 1
                continue
            lat.append(m.latency.sec * 1e3 + m.latency.nanosec * 1e-6)
            if m.detections:
                depths.append(m.detections[0].depth_reached)
                if m.outcome == DetectionArray.ON_TIME and \
                        m.detections[0].class_id == self.sent[key]:
                    correct += 1
        n = len(self.sent)
        return {
            'sent': n, 'answered': len(outs), 'missing': n - len(outs),
            'on_time': by[DetectionArray.ON_TIME], 'late': by[DetectionArray.LATE],
            'dropped': by[DetectionArray.DROPPED], 'drops_by_reason': reasons,
            'duplicates': self.duplicates, 'unknown': self.unknown,
            'frame_id_mismatch': self.frame_id_mismatch,
            'accuracy': correct / n if n else 0.0,
            'mean_depth': float(np.mean(depths)) if depths else 0.0,
            'depths': [int(x) for x in np.bincount(depths)] if depths else [],
            'latency_ms_p50': float(np.percentile(lat, 50)) if lat else None,
            'latency_ms_p99': float(np.percentile(lat, 99)) if lat else None,
        }


def play(node, topics: List[str], samples: Dict[str, np.ndarray], rate_hz: float,
         frames: int, size: int = 0, settle_s: float = 3.0, progress=None,
         warmup_s: float = 20.0, reliable_images: bool = False) -> Tally:
    """
    Publish ``frames`` frames per camera at ``rate_hz`` and collect the outcomes.

    Waits (up to ``warmup_s``) until every detections topic has a publisher, so that no
    frame is sent before the node listens, then plays, then waits ``settle_s`` for the
    last outcomes.
    """
    from anytime_infer.msg import DetectionArray
    from anytime_infer.node.anytime_infer_node import camera_name
    from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    tally = Tally()
    # Deep queues: at hundreds of frames per second a reliable KEEP_LAST writer whose
    # reader falls behind overwrites what was not acknowledged yet.
    reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    image_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE) \
        if reliable_images else qos_profile_sensor_data
    pubs = [node.create_publisher(Image, t, image_qos) for t in topics]
    frame_ids = [camera_name(t).strip('/').replace('/', '_') + '_optical' for t in topics]
    subs = []
    for t, fid in zip(topics, frame_ids):
        subs.append(node.create_subscription(
            DetectionArray, camera_name(t) + '/detections',
            lambda m, t=t, fid=fid: tally.add(
                (t, m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec), m, fid),
            reliable))
    try:
        return _play(node, pubs, topics, frame_ids, tally, samples, rate_hz, frames, size,
                     settle_s, progress, warmup_s)
    finally:   # a node that plays again must not feed old tallies
        for sub in subs:
            node.destroy_subscription(sub)
        for pub in pubs:
            node.destroy_publisher(pub)


def _play(node, pubs, topics, frame_ids, tally, samples, rate_hz, frames, size, settle_s,
          progress, warmup_s) -> Tally:
    import rclpy
    end = time.monotonic() + warmup_s
    while time.monotonic() < end and not all(p.get_subscription_count() for p in pubs):
        rclpy.spin_once(node, timeout_sec=0.05)
    if not all(p.get_subscription_count() for p in pubs):
        raise RuntimeError('the node does not subscribe to ' + ', '.join(topics))
    imgs, labels = samples['images'], samples['labels']
    cache: Dict[tuple, object] = {}
    period = 1.0 / rate_hz
    start = time.monotonic()
    k = 0
    for i in range(frames):
        due = start + i * period
        while time.monotonic() < due:
            rclpy.spin_once(node, timeout_sec=max(0.0, min(due - time.monotonic(), 0.01)))
        for c, (pub, topic) in enumerate(zip(pubs, topics)):
            j = (i * len(topics) + c) % len(imgs)
            stamp = node.get_clock().now().nanoseconds
            key = (j, c)
            msg = cache.get(key)
            if msg is None:   # large frames are built once, then only re-stamped
                msg = cache[key] = frame_message(imgs[j], stamp, frame_ids[c], size)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            pub.publish(msg)
            tally.sent[(topic, stamp)] = int(labels[j])
            k += 1
        if progress and i % max(1, int(rate_hz)) == 0:
            progress(tally)
    end = time.monotonic() + settle_s
    while time.monotonic() < end and len(tally.outcomes) < len(tally.sent):
        rclpy.spin_once(node, timeout_sec=0.05)
    return tally


def node_command(params: str, extra: Optional[List[str]] = None) -> List[str]:
    """How the launch file starts the node: the executable with the params file."""
    exe = os.path.join(os.path.dirname(sys.executable), 'anytime_infer_node')
    cmd = [exe] if os.path.exists(exe) else [sys.executable, '-m', 'anytime_infer.node']
    return cmd + ['--ros-args', '--params-file', params] + (extra or [])


def run_demo(model: str = 'fashion_mnist', rate_hz: float = 30.0, seconds: float = 20.0,
             policy: str = 'imprecise_dp', deadline_ms: float = 40.0) -> int:
    """Start the node, play the bundled samples on two cameras, print progress and report."""
    from anytime_infer.ros_env import apply_ros_env_defaults
    apply_ros_env_defaults()
    import rclpy
    repo_cfg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            'config', 'anytime_infer.yaml')
    topics = ['camera_front/image_raw', 'camera_rear/image_raw']
    samples = load_samples(model)
    cmd = node_command(repo_cfg, ['-p', f'model:={model}', '-p', f'policy:={policy}',
                                  '-p', f'deadline_ms:={deadline_ms}'])
    print(f'demo: starting the node: {" ".join(cmd)}', flush=True)
    proc = subprocess.Popen(cmd)
    rclpy.init()
    node = rclpy.create_node('anytime_infer_demo_camera')

    def progress(t: Tally) -> None:
        s = t.summary()
        print(f'\rframes {s["sent"]:5d}  answered {s["answered"]:5d}  on time '
              f'{s["on_time"]:5d}  mean depth {s["mean_depth"]:.2f}  accuracy '
              f'{s["accuracy"]:.3f}', end='', flush=True)
    try:
        tally = play(node, topics, samples, rate_hz, int(rate_hz * seconds), size=112,
                     progress=progress, warmup_s=60.0)
    finally:
        node.destroy_node()
        rclpy.shutdown()
        proc.terminate()
        proc.wait(timeout=20)
    s = tally.summary()
    print()
    print(f'demo report: {model}, policy {policy}, 2 cameras at {rate_hz} Hz, deadline '
          f'{deadline_ms} ms')
    print(f'  frames sent {s["sent"]}, outcomes {s["answered"]} (missing {s["missing"]}): '
          f'on time {s["on_time"]}, late {s["late"]}, dropped {s["dropped"]} '
          f'{s["drops_by_reason"]}')
    print(f'  accuracy {s["accuracy"]:.3f} (all frames; late and dropped count as wrong), '
          f'mean depth {s["mean_depth"]:.2f}, depth histogram {s["depths"][1:]}')
    print(f'  latency p50 {s["latency_ms_p50"]:.1f} ms, p99 {s["latency_ms_p99"]:.1f} ms')
    return 0 if s['answered'] else 1


def bench_node(model: str = 'fashion_mnist', rates=(5.0, 10.0, 15.0, 20.0, 30.0),
               seconds: float = 6.0, width: int = 1280, height: int = 720,
               reliability: str = 'reliable') -> str:
    """
    Two rgb8 cameras of ``width`` x ``height`` into the real node, rate by rate.

    Reports, per rate, frames sent, received by the node (its own counter), outcomes,
    end-to-end latency (arrival at the node to publication) and the node's per-frame
    conversion time; frames sent but never received were lost in transport.
    """
    import cv2
    from anytime_infer.ros_env import apply_ros_env_defaults
    apply_ros_env_defaults()
    import rclpy
    from anytime_infer.msg import SchedulerStatus
    from diagnostic_msgs.msg import DiagnosticArray
    repo_cfg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            'config', 'anytime_infer.yaml')
    samples = load_samples(model)
    big = np.stack([cv2.resize(np.repeat(im, 3, axis=2) if im.shape[2] == 1 else im,
                               (width, height)) for im in samples['images'][:8]])
    big_samples = {'images': big, 'labels': samples['labels'][:8]}
    topics = ['camera_front/image_raw', 'camera_rear/image_raw']
    proc = subprocess.Popen(node_command(repo_cfg, ['-p', f'model:={model}',
                                                    '-p', 'deadline_ms:=200.0',
                                                    '-p', 'status_rate_hz:=5.0',
                                                    '-p', f'qos_reliability:={reliability}']),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rclpy.init()
    node = rclpy.create_node('anytime_infer_bench_camera')
    status, diag = {}, {}
    node.create_subscription(SchedulerStatus, '/anytime_infer/status',
                             lambda m: status.update(msg=m), 10)
    node.create_subscription(
        DiagnosticArray, '/diagnostics',
        lambda m: diag.update({kv.key: kv.value for st in m.status for kv in st.values}), 10)
    lines = [f'two {width}x{height} rgb8 cameras, model {model}, {seconds:.0f} s per rate, '
             f'{reliability} image QoS, FASTDDS_BUILTIN_TRANSPORTS='
             f'{os.environ.get("FASTDDS_BUILTIN_TRANSPORTS")}',
             '', '| rate per camera (Hz) | sent | received by node | outcomes | on time | '
             'mean depth | latency p50 / p99 (ms) | conversion p50 (ms) |',
             '|---|---|---|---|---|---|---|---|']
    try:
        before = 0
        for rate in rates:
            tally = play(node, topics, big_samples, rate, int(rate * seconds), settle_s=3.0,
                         warmup_s=60.0, reliable_images=reliability == 'reliable')
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.05)
            s = tally.summary()
            got = status['msg'].frames_received if 'msg' in status else -1
            lines.append(f'| {rate:g} | {s["sent"]} | {got - before} | {s["answered"]} | '
                         f'{s["on_time"]} | {s["mean_depth"]:.2f} | '
                         f'{s["latency_ms_p50"] or 0:.1f} / {s["latency_ms_p99"] or 0:.1f} | '
                         f'{diag.get("conversion_ms_p50", "?")} |')
            before = got
    finally:
        node.destroy_node()
        rclpy.shutdown()
        proc.terminate()
        proc.wait(timeout=20)
    return '\n'.join(lines)
