"""
Recorded drives: write rosbag2 bags of labelled camera frames, replay bags and score them.

``make_bag`` writes camera topics (raw or compressed images) and ``<camera>/ground_truth``
(a ``DetectionArray`` sharing each frame's header stamp) with rosbags, mcap or sqlite3.
``replay`` reads any rosbag2 bag (image topics found by type), then either plays it into
the real node over DDS on sim time and records the node's outputs, or (``deterministic``)
evaluates it without DDS or wall clock: model outputs computed on the frames, stage times
drawn with a seed from the profile, the simulator's clock. Every image message in the bag
ends in exactly one outcome; frames that never reached the node count as ``lost``.
"""
from dataclasses import dataclass, field
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
DETECTIONS = 'anytime_infer/msg/DetectionArray'


class BagError(RuntimeError):
    """A bag that cannot be read (missing, not a bag, no images, corrupt)."""


@dataclass
class Frame:
    """One image message of the bag."""

    index: int
    camera: int
    topic: str
    time_ns: int                 # bag receive time
    stamp_ns: int                # header stamp
    frame_id: str
    msg: object                  # the deserialised message (rosbags)
    label: Optional[str] = None  # ground truth class name, when the bag has it


@dataclass
class BagContents:
    """Frames in bag order, camera topics, and what went wrong while reading."""

    frames: List[Frame] = field(default_factory=list)
    topics: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    has_ground_truth: bool = False


def camera_of(topic: str) -> str:
    """Camera namespace of an image topic."""
    from anytime_infer.node.anytime_infer_node import camera_name
    return camera_name(topic)


# -- writing ------------------------------------------------------------------------------
def make_bag(out: str, model: Optional[str] = 'fashion_mnist', images: Optional[str] = None,
             storage: str = 'mcap', compressed: bool = False, cameras: int = 2,
             rate: float = 10.0, frames: int = 100, size: int = 112, seed: int = 0) -> Dict:
    """Write a bag of camera frames from a labelled test split, with ground truth."""
    import cv2
    from anytime_infer.bagtypes import project_typestore
    from anytime_infer.demo import frame_message
    from anytime_infer.msg import Detection, DetectionArray
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from sensor_msgs.msg import CompressedImage

    if os.path.exists(out):
        raise FileExistsError(f'{out} exists; choose a new --out')
    imgs, labels, classes = _labelled_frames(model, images, seed)
    store = project_typestore()
    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    t0 = 1_700_000_000 * 10**9
    period = int(1e9 / rate)
    rng = np.random.default_rng(seed)
    with Writer(out, version=9, storage_plugin=plugin) as writer:
        conns = []
        for c in range(cameras):
            cam = f'/camera_{c}'
            img_topic = f'{cam}/image_raw' + ('/compressed' if compressed else '')
            img_type = 'sensor_msgs/msg/CompressedImage' if compressed else \
                'sensor_msgs/msg/Image'
            conns.append((writer.add_connection(img_topic, img_type, typestore=store),
                          writer.add_connection(f'{cam}/ground_truth', DETECTIONS,
                                                typestore=store)))
        order = rng.permutation(len(imgs))
        k = 0
        for i in range(frames):
            for c in range(cameras):
                j = order[k % len(order)]
                k += 1
                t = t0 + i * period + c * period // (2 * cameras)
                msg = frame_message(imgs[j], t, f'camera_{c}_optical', size)
                if compressed:
                    rgb = np.frombuffer(bytes(msg.data), np.uint8).reshape(
                        msg.height, msg.width, 3)
                    ok, png = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                    msg = CompressedImage(header=msg.header, format='png')
                    msg.data = png.tobytes()
                gt = DetectionArray(header=msg.header)
                gt.detections = [Detection(class_id=int(labels[j]),
                                           label=classes[int(labels[j])], confidence=1.0)]
                writer.write(conns[c][0], t, serialize_message(msg))
                writer.write(conns[c][1], t, serialize_message(gt))
    return {'bag': out, 'cameras': cameras, 'frames_per_camera': frames, 'rate_hz': rate,
            'storage': storage, 'compressed': compressed}


def _labelled_frames(model: Optional[str], images: Optional[str], seed: int):
    from anytime_infer.model.data import load_image_folder
    if images:
        ds = load_image_folder(images, seed=seed)
        x, y = ds.subset('test')
        return x, y, ds.classes
    from anytime_infer.demo import load_samples
    s = load_samples(model or 'fashion_mnist')
    return s['images'], s['labels'], [str(c) for c in s['classes']]


# -- reading ------------------------------------------------------------------------------
def read_bag(path: str, topics: Optional[Sequence[str]] = None) -> BagContents:
    """Read image frames (and ground truth) from a rosbag2 bag, mcap or sqlite3."""
    from anytime_infer.bagtypes import project_typestore
    from rosbags.highlevel import AnyReader
    if not os.path.exists(path):
        raise BagError(f'{path}: no such bag')
    out = BagContents()
    try:
        reader = AnyReader([_bag_path(path)], default_typestore=project_typestore())
        reader.open()
    except Exception as e:  # noqa: B902 - rosbags raises many kinds for a bad file
        raise BagError(f'{path}: not a readable rosbag2 bag ({e})') from None
    try:
        image_conns = [c for c in reader.connections if c.msgtype in IMAGE_TYPES and
                       (not topics or c.topic in topics)]
        if not image_conns:
            found = sorted({f'{c.topic} ({c.msgtype})' for c in reader.connections})
            raise BagError(f'{path}: no image topics (sensor_msgs Image/CompressedImage) '
                           f'among {found or "nothing"}')
        out.topics = sorted({c.topic for c in image_conns})
        cams = {t: i for i, t in enumerate(out.topics)}
        gt_conns = [c for c in reader.connections if c.msgtype == DETECTIONS and
                    c.topic.endswith('/ground_truth') and
                    any(c.topic[:-len('/ground_truth')] == camera_of(t) for t in out.topics)]
        out.has_ground_truth = bool(gt_conns)
        truth: Dict[Tuple[str, int], str] = {}
        try:
            for conn, t, raw in reader.messages(connections=image_conns + gt_conns):
                msg = reader.deserialize(raw, conn.msgtype)
                stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
                if conn.msgtype == DETECTIONS:
                    if msg.detections:
                        cam = conn.topic[:-len('/ground_truth')]
                        truth[(cam, stamp)] = msg.detections[0].label
                    continue
                out.frames.append(Frame(len(out.frames), cams[conn.topic], conn.topic, t,
                                        stamp, msg.header.frame_id, msg))
        except Exception as e:  # noqa: B902 - a corrupt chunk ends reading, kept as error
            out.errors.append(f'{path}: reading stopped after {len(out.frames)} frames: {e}')
        for f in out.frames:
            f.label = truth.get((camera_of(f.topic), f.stamp_ns))
    finally:
        reader.close()
    if not out.frames and not out.errors:
        raise BagError(f'{path}: the image topics hold no messages')
    return out


def _bag_path(path: str):
    from pathlib import Path
    p = Path(path)
    if p.is_file() and p.suffix == '.mcap':   # a bare mcap file: use its folder if bagged
        meta = p.parent / 'metadata.yaml'
        return p.parent if meta.exists() else p
    return p


# -- evaluation ---------------------------------------------------------------------------
def _percentiles(ms: List[float]) -> Dict:
    if not ms:
        return {'latency_ms_p50': None, 'latency_ms_p95': None, 'latency_ms_p99': None}
    a = np.array(ms)
    return {f'latency_ms_p{q}': round(float(np.percentile(a, q)), 4) for q in (50, 95, 99)}


def summarise(rows: List[Dict], has_gt: bool) -> Dict:
    """Sum up counts, accuracy, depth and latency of per-frame outcome rows."""
    n = len(rows)
    dropped: Dict[str, int] = {}
    for r in rows:
        if r['outcome'] == 'dropped':
            dropped[r['reason']] = dropped.get(r['reason'], 0) + 1
    depths = [r['depth'] for r in rows if r['outcome'] in ('on_time', 'late')]
    out = {'frames_in': n,
           'on_time': sum(r['outcome'] == 'on_time' for r in rows),
           'late': sum(r['outcome'] == 'late' for r in rows),
           'dropped': dropped,
           'accuracy': (round(sum(r['correct'] for r in rows) / n, 6) if n else None)
           if has_gt else None,
           'mean_depth': round(float(np.mean(depths)), 6) if depths else 0.0,
           'depth_histogram': [int(x) for x in np.bincount(depths)[1:]] if depths else []}
    out.update(_percentiles([r['latency_ms'] for r in rows if r['latency_ms'] is not None]))
    return out


def report(bag: str, mode: str, policy: str, contents: BagContents, rows: List[Dict],
           extra_errors: Sequence[str] = ()) -> Dict:
    """Build the report: per camera and in total, plus completeness and errors."""
    per = {}
    for i, t in enumerate(contents.topics):
        per[t] = summarise([r for r in rows if r['camera'] == i], contents.has_ground_truth)
    errors = list(contents.errors) + list(extra_errors)
    return {'bag': os.path.abspath(bag), 'mode': mode, 'policy': policy,
            'complete': not errors, 'errors': errors,
            'ground_truth': contents.has_ground_truth,
            'total': summarise(rows, contents.has_ground_truth), 'cameras': per}


def _convert(frames: List[Frame], pre: Dict, max_pixels: int):
    from anytime_infer.node.imageconv import BadInput, compressed_to_array, image_to_array, \
        to_model_input
    inputs, bad = {}, {}
    for f in frames:
        try:
            compressed = hasattr(f.msg, 'format') and not hasattr(f.msg, 'encoding')
            arr, enc = (compressed_to_array if compressed else image_to_array)(f.msg,
                                                                               max_pixels)
            inputs[f.index] = to_model_input(arr, enc, pre['height'], pre['width'],
                                             pre['channels'])
        except (BadInput, ValueError) as e:
            bad[f.index] = str(e)
    return inputs, bad


def evaluate_deterministic(bag: str, contents: BagContents, model: str, policy: str,
                           deadline_ms: float, seed: int = 0, rate: float = 1.0,
                           depth: Optional[int] = None) -> Dict:
    """Evaluate without DDS or wall clock: same bag and seed, same report, byte for byte."""
    import torch

    from anytime_infer.model.calibrate import softmax
    from anytime_infer.model.data import Preprocess, to_tensor_batch
    from anytime_infer.model.store import load_model, PROFILE, read_json, resolve_model_dir
    from anytime_infer.scheduler.policies import make_policy
    from anytime_infer.scheduler.profiles import profile_from_dict
    from anytime_infer.scheduler.simulator import simulate, Stream
    from anytime_infer.scheduler.timing import StageTimes
    from anytime_infer.scheduler.traces import Trace
    torch.manual_seed(seed)
    folder = resolve_model_dir(model)
    net, card = load_model(folder)
    raw = read_json(os.path.join(folder, PROFILE), 'profile')
    prof = profile_from_dict(raw, name=folder)
    inputs, bad = _convert(contents.frames, card['preprocess'], 1 << 26)
    good = [f for f in contents.frames if f.index in inputs]
    n_exits = net.num_stages
    conf = np.zeros((len(good), n_exits))
    pred = np.zeros((len(good), n_exits), dtype=np.int64)
    with torch.inference_mode():
        for s in range(0, len(good), 256):
            chunk = np.stack([inputs[f.index] for f in good[s:s + 256]])
            outs = net(to_tensor_batch(chunk, Preprocess(**card['preprocess'])))
            for k, lg in enumerate(outs):
                p = softmax(lg.numpy().astype(np.float64), raw['temperature'][k])
                conf[s:s + len(chunk), k] = p.max(axis=1)
                pred[s:s + len(chunk), k] = p.argmax(axis=1)
    classes = card['classes']
    correct = np.array([[classes[pred[i, k]] == (f.label or '') for k in range(n_exits)]
                        for i, f in enumerate(good)], dtype=bool).reshape(len(good), n_exits)
    trace = Trace([str(f.index) for f in good], conf, correct)
    t0 = min(f.time_ns for f in contents.frames)
    arrivals = [((f.time_ns - t0) / 1e9 / rate, f.camera) for f in good]
    # Like a replay over DDS at --rate r on the bag's clock: the bag runs r times faster
    # than the stages, so arrivals and deadlines shrink by r here, and latencies are
    # reported back in bag time (x r).
    streams = [Stream(1.0, deadline_ms / 1000.0 / rate) for _ in contents.topics]
    pol = make_policy(policy, prof, depth=depth, times=StageTimes(prof))
    res = simulate(prof, trace, pol, streams, len(good), seed, charge_decisions=False,
                   arrivals=arrivals, samples=np.arange(len(good)))
    rows = []
    by_index = {f.index: r for f, r in zip(good, res.frames)}
    for f in contents.frames:
        if f.index in bad:
            rows.append({'camera': f.camera, 'outcome': 'dropped', 'reason': 'bad_input',
                         'depth': 0, 'correct': False, 'latency_ms': None})
            continue
        r = by_index[f.index]
        rows.append({'camera': f.camera, 'outcome': r.outcome, 'reason': r.reason,
                     'depth': r.depth, 'correct': bool(r.correct and r.outcome == 'on_time'),
                     'latency_ms': round(r.latency * 1000.0 * rate, 6)
                     if r.outcome != 'dropped' else None,
                     't': (f.time_ns - t0) / 1e9})
    return report(bag, 'deterministic', pol.name, contents, rows), rows


def evaluate_dds(bag: str, contents: BagContents, out_dir: str, model: str, policy: str,
                 deadline_ms: float, rate: float = 1.0, settle_s: float = 3.0,
                 progress=None) -> Dict:
    """Play the bag into the real node over DDS on sim time; record and score its outputs."""
    from anytime_infer.ros_env import apply_ros_env_defaults
    apply_ros_env_defaults()
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import serialize_message
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage, Image

    from anytime_infer.demo import node_command
    from anytime_infer.msg import DetectionArray
    repo_cfg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            'config', 'anytime_infer.yaml')
    topics = contents.topics
    cmd = node_command(repo_cfg, [
        '-p', 'camera_topics:=[' + ','.join(topics) + ']', '-p', f'model:={model}',
        '-p', f'policy:={policy}', '-p', f'deadline_ms:={deadline_ms}',
        '-p', 'use_sim_time:=true', '-p', 'qos_reliability:=reliable', '-p', 'qos_depth:=1000',
        '-p', f'max_queue:={max(64, 8 * len(topics))}', '-p', 'stamp_tolerance_s:=1e6'])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rclpy.init()
    node = rclpy.create_node('anytime_infer_replay')
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    received: Dict[Tuple[int, int], Tuple[int, bytes, object]] = {}
    record: List[Tuple[str, int, bytes]] = []

    def on_det(msg, cam_i, det_topic):
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        received.setdefault((cam_i, stamp), msg)
        record.append((det_topic, node.get_clock().now().nanoseconds,
                       serialize_message(msg)))
    pubs = []
    for i, t in enumerate(topics):
        compressed = t.endswith('/compressed')
        pubs.append(node.create_publisher(CompressedImage if compressed else Image, t,
                                          QoSProfile(depth=50,
                                                     reliability=ReliabilityPolicy.RELIABLE)))
        det = camera_of(t) + '/detections'
        node.create_subscription(DetectionArray, det,
                                 lambda m, i=i, d=det: on_det(m, i, d), reliable)
    clock_pub = node.create_publisher(Clock, '/clock', 10)
    errors = []
    try:
        end = time.monotonic() + 90
        while time.monotonic() < end and not all(p.get_subscription_count() for p in pubs):
            rclpy.spin_once(node, timeout_sec=0.05)
        if not all(p.get_subscription_count() for p in pubs):
            raise BagError("the node did not subscribe to the bag's image topics in 90 s")
        t0 = contents.frames[0].time_ns
        start = time.monotonic()

        def tick() -> None:
            # /clock follows the bag's time, advanced with the wall clock x rate (1 ms
            # steps), so the node's deadlines and latencies are in bag time.
            clock = Clock()
            sim = t0 + int((time.monotonic() - start) * rate * 1e9)
            clock.clock.sec, clock.clock.nanosec = divmod(sim, 10**9)
            clock_pub.publish(clock)
        for k, f in enumerate(contents.frames):
            due = start + (f.time_ns - t0) / 1e9 / rate
            while time.monotonic() < due:
                tick()
                rclpy.spin_once(node, timeout_sec=max(0.0, min(due - time.monotonic(), 0.001)))
            tick()
            pubs[f.camera].publish(_to_rclpy(f.msg))
            if progress:
                progress(k + 1, len(contents.frames))
        # Let time run on past the last deadline so pending frames end.
        end = time.monotonic() + settle_s
        while time.monotonic() < end and len(received) < len(contents.frames):
            tick()
            rclpy.spin_once(node, timeout_sec=0.001)
    except BagError as e:
        errors.append(str(e))
    finally:
        node.destroy_node()
        rclpy.shutdown()
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    rows = []
    for f in contents.frames:
        m = received.get((f.camera, f.stamp_ns))
        if m is None:
            rows.append({'camera': f.camera, 'outcome': 'dropped', 'reason': 'lost',
                         'depth': 0, 'correct': False, 'latency_ms': None})
            continue
        outcome = {DetectionArray.ON_TIME: 'on_time', DetectionArray.LATE: 'late'}.get(
            m.outcome, 'dropped')
        label = m.detections[0].label if m.detections else None
        rows.append({'camera': f.camera, 'outcome': outcome, 'reason': m.reason,
                     'depth': m.detections[0].depth_reached if m.detections else 0,
                     'correct': bool(outcome == 'on_time' and f.label is not None and
                                     label == f.label),
                     'latency_ms': m.latency.sec * 1e3 + m.latency.nanosec * 1e-6
                     if outcome != 'dropped' else None,
                     't': (f.time_ns - contents.frames[0].time_ns) / 1e9})
    write_detections(os.path.join(out_dir, 'detections.mcap'), record)
    return report(bag, 'dds', policy, contents, rows, errors), rows


def _to_rclpy(msg):
    """Copy a rosbags image message into the rclpy message of the same type."""
    from array import array

    from sensor_msgs.msg import CompressedImage, Image
    if hasattr(msg, 'encoding'):
        out = Image(height=int(msg.height), width=int(msg.width), encoding=msg.encoding,
                    is_bigendian=int(msg.is_bigendian), step=int(msg.step))
    else:
        out = CompressedImage(format=msg.format)
    out.header.frame_id = msg.header.frame_id
    out.header.stamp.sec, out.header.stamp.nanosec = msg.header.stamp.sec, \
        msg.header.stamp.nanosec
    out.data = array('B', np.asarray(msg.data, dtype=np.uint8).tobytes())
    return out


def write_detections(path: str, record: List[Tuple[str, int, bytes]]) -> None:
    """Write the node's outputs (raw CDR) into an mcap rosbag2 bag any ROS user can open."""
    from anytime_infer.bagtypes import project_typestore
    from rosbags.rosbag2 import StoragePlugin, Writer
    import shutil
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


def write_outputs(out_dir: str, rep: Dict, rows: List[Dict]) -> List[str]:
    """Write report.json, report.md and the plots."""
    os.makedirs(out_dir, exist_ok=True)
    files = []
    path = os.path.join(out_dir, 'report.json')
    with open(path, 'w') as f:
        json.dump(rep, f, indent=1, sort_keys=True)
        f.write('\n')
    files.append(path)
    path = os.path.join(out_dir, 'report.md')
    with open(path, 'w') as f:
        f.write(report_markdown([rep]))
    files.append(path)
    files += plot_replay(out_dir, rep, rows)
    return files


def report_markdown(reps: List[Dict]) -> str:
    """Tabulate reports: one row per policy and camera (policies side by side)."""
    lines = [f'# replay of {reps[0]["bag"]} ({reps[0]["mode"]})', '',
             '| policy | camera | frames_in | on_time | late | dropped | accuracy | '
             'mean_depth | latency p50 / p95 / p99 ms |', '|---|---|---|---|---|---|---|---|---|']
    for rep in reps:
        for cam, s in list(rep['cameras'].items()) + [('total', rep['total'])]:
            acc = '' if s['accuracy'] is None else f'{s["accuracy"]:.3f}'
            lat = ' / '.join('-' if s[f'latency_ms_p{q}'] is None else
                             f'{s[f"latency_ms_p{q}"]:.1f}' for q in (50, 95, 99))
            lines.append(f'| {rep["policy"]} | {cam} | {s["frames_in"]} | {s["on_time"]} | '
                         f'{s["late"]} | {s["dropped"] or 0} | {acc} | '
                         f'{s["mean_depth"]:.2f} | {lat} |')
        if not rep['complete']:
            lines.append(f'\nINCOMPLETE ({rep["policy"]}): ' + '; '.join(rep['errors']))
    return '\n'.join(lines) + '\n'


def plot_replay(out_dir: str, rep: Dict, rows: List[Dict]) -> List[str]:
    """Outcomes per camera, accuracy and depth over time, latency histogram."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    cams = list(rep['cameras'])
    kinds = ['on_time', 'late', 'dropped']
    bottom = np.zeros(len(cams))
    for kind in kinds:
        vals = np.array([rep['cameras'][c][kind] if kind != 'dropped' else
                         sum(rep['cameras'][c]['dropped'].values()) for c in cams], float)
        axes[0].bar(range(len(cams)), vals, bottom=bottom, label=kind)
        bottom += vals
    axes[0].set_xticks(range(len(cams)), [camera_of(c) for c in cams], fontsize=7)
    axes[0].set_title('outcomes per camera')
    axes[0].legend(fontsize=7)
    ts = np.array([r.get('t', 0.0) for r in rows])
    if len(rows):
        bins = np.linspace(ts.min(), ts.max() + 1e-9, 21)
        idx = np.digitize(ts, bins) - 1
        acc = [np.mean([r['correct'] for r, i in zip(rows, idx) if i == b] or [np.nan])
               for b in range(20)]
        dep = [np.mean([r['depth'] for r, i in zip(rows, idx) if i == b and r['depth']]
                       or [np.nan]) for b in range(20)]
        centers = (bins[:-1] + bins[1:]) / 2
        axes[1].plot(centers, acc, marker='o', label='accuracy')
        ax2 = axes[1].twinx()
        ax2.plot(centers, dep, color='tab:orange', marker='s', label='mean depth')
        ax2.set_ylabel('mean depth')
        axes[1].set_xlabel('bag time (s)')
        axes[1].set_title('accuracy and depth over time')
    lat = [r['latency_ms'] for r in rows if r['latency_ms'] is not None]
    axes[2].hist(lat, bins=30)
    axes[2].set_xlabel('latency (ms)')
    axes[2].set_title('latency histogram')
    fig.tight_layout()
    path = os.path.join(out_dir, 'replay.png')
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return [path]


def replay(bag: str, out_dir: str, model: str = 'fashion_mnist', policy: str = 'imprecise_dp',
           compare: Optional[List[str]] = None, topics: Optional[Sequence[str]] = None,
           rate: float = 1.0, deterministic: bool = False, deadline_ms: float = 100.0,
           seed: int = 0, progress=None) -> Tuple[int, List[Dict]]:
    """Replay a bag once per policy; write the reports; return (exit status, reports)."""
    try:
        contents = read_bag(bag, topics)
    except BagError as e:
        os.makedirs(out_dir, exist_ok=True)
        rep = {'bag': os.path.abspath(bag), 'complete': False, 'errors': [str(e)],
               'mode': 'deterministic' if deterministic else 'dds', 'policy': policy}
        with open(os.path.join(out_dir, 'report.json'), 'w') as f:
            json.dump(rep, f, indent=1, sort_keys=True)
            f.write('\n')
        print(f'anytime-infer replay: error: {e}', file=sys.stderr)
        return 2, [rep]
    reps = []
    for pol in (compare or [policy]):
        sub = out_dir if not compare else os.path.join(out_dir, pol)
        os.makedirs(sub, exist_ok=True)
        if deterministic:
            rep, rows = evaluate_deterministic(bag, contents, model, pol, deadline_ms, seed,
                                               rate)
        else:
            rep, rows = evaluate_dds(bag, contents, sub, model, pol, deadline_ms, rate,
                                     progress=progress)
        write_outputs(sub, rep, rows)
        reps.append(rep)
    if compare:
        with open(os.path.join(out_dir, 'compare.md'), 'w') as f:
            f.write(report_markdown(reps))
    status = 0 if all(r['complete'] for r in reps) else 3
    return status, reps
