"""
The camera player: labelled frames on camera topics, every outcome matched to its frame.

The material is a bundled model's sample set (its test split, ``load_samples``), frames
are made from it (``frame_message``: rgb8 with header stamp and frame id), and ``play``
publishes them on several camera topics at a set rate and listens on
``<camera>/detections`` (every frame matched to its one outcome by stamp, tallied in a
``Tally``); ``node_command`` is the node's command line as the launch file runs it. The
demo, the node benchmark, bag making and bag replay use it.
"""
from array import array
from dataclasses import dataclass, field
import os
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
    primed: Dict[tuple, bool] = field(default_factory=dict)   # priming frame -> answered

    def add(self, key: tuple, msg, frame_id: str) -> None:
        """Record one DetectionArray (a priming frame's answer is kept apart)."""
        if key in self.primed:
            self.primed[key] = True
        elif key not in self.sent:
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
         warmup_s: float = 20.0, reliable_images: bool = False, prime: bool = True) -> Tally:
    """
    Publish ``frames`` frames per camera at ``rate_hz`` and collect the outcomes.

    Waits (up to ``warmup_s``) until every image topic has a subscriber, so that no frame
    is sent before the node listens; with ``prime``, also until one priming frame per
    camera has come back answered (kept out of the tally: ``Tally.primed``); then plays,
    then waits ``settle_s`` for the last outcomes.

    Why prime: a writer sees the node's reader before the node's reader has matched the
    writer; best-effort frames sent in between are lost (the demo on a busy machine lost
    its first 2 of 1200 frames that way).
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
                     settle_s, progress, warmup_s, prime)
    finally:   # a node that plays again must not feed old tallies
        for sub in subs:
            node.destroy_subscription(sub)
        for pub in pubs:
            node.destroy_publisher(pub)


def _play(node, pubs, topics, frame_ids, tally, samples, rate_hz, frames, size, settle_s,
          progress, warmup_s, prime) -> Tally:
    import rclpy
    end = time.monotonic() + warmup_s
    while time.monotonic() < end and not all(p.get_subscription_count() for p in pubs):
        rclpy.spin_once(node, timeout_sec=0.05)
    if not all(p.get_subscription_count() for p in pubs):
        raise RuntimeError('the node does not subscribe to ' + ', '.join(topics))
    imgs, labels = samples['images'], samples['labels']
    if prime:
        _prime(node, pubs, topics, frame_ids, tally, imgs, size, end)
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


PRIME_PERIOD_S = 0.1     # one priming frame per unanswered camera this often


def _prime(node, pubs, topics, frame_ids, tally, imgs, size, end: float) -> None:
    """Send a frame on every camera not answered yet, until each has one answer."""
    import rclpy
    answered = [False] * len(pubs)
    while not all(answered):
        if time.monotonic() >= end:
            raise RuntimeError('no answer from the node within the warm-up on ' + ', '.join(
                t for t, a in zip(topics, answered) if not a))
        for c, (pub, topic) in enumerate(zip(pubs, topics)):
            if answered[c]:
                continue
            stamp = node.get_clock().now().nanoseconds
            tally.primed[(topic, stamp)] = False
            pub.publish(frame_message(imgs[c % len(imgs)], stamp, frame_ids[c], size))
        t_next = time.monotonic() + PRIME_PERIOD_S
        while time.monotonic() < t_next:
            rclpy.spin_once(node, timeout_sec=0.01)
        answered = [any(a for (t, _), a in tally.primed.items() if t == topic)
                    for topic in topics]


def node_command(params: str, extra: Optional[List[str]] = None) -> List[str]:
    """How the launch file starts the node: the executable with the params file."""
    exe = os.path.join(os.path.dirname(sys.executable), 'anytime_infer_node')
    cmd = [exe] if os.path.exists(exe) else [sys.executable, '-m', 'anytime_infer.node']
    return cmd + ['--ros-args', '--params-file', params] + (extra or [])
