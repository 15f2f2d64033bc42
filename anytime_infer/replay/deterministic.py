"""
Deterministic replay: a bag evaluated without DDS or wall clock.

``run_model`` reads the bag once, converts every image as the node does and runs the
model on it in fixed chunks (images are let go as soon as they are converted, so a long
drive is not held in memory); ``decide`` then lets the scheduler's simulator decide, per
policy, on the bag's arrival times: stage times drawn with the seed from the profile, the
simulator's clock. It returns the report, the per-frame rows and, for every frame, the
``DetectionArray`` the node would publish, on the bag's clock. Same bag, model, policy and
seed: the same bytes.
"""
from dataclasses import dataclass, field
import os
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from anytime_infer.replay.bags import BagContents, camera_of, Frame, read_bag
from anytime_infer.replay.detections import detection_array_cdr, Result
from anytime_infer.replay.reports import report
import numpy as np

CHUNK = 256   # frames per forward pass (fixed: results must not depend on timing)
MAX_PIXELS = 1 << 26


@dataclass
class ModelRun:
    """What the model made of every frame of a bag (all exits), before any policy."""

    bag: str
    contents: BagContents
    classes: List[str]
    profile: object                                   # scheduler ModelProfile
    num_stages: int
    good: List[Frame] = field(default_factory=list)   # frames converted and run
    bad: Dict[int, str] = field(default_factory=dict)   # frame index -> conversion error
    sizes: Dict[int, Tuple[int, int]] = field(default_factory=dict)   # index -> (w, h)
    conf: Optional[np.ndarray] = None                 # (good, exits) calibrated confidence
    pred: Optional[np.ndarray] = None                 # (good, exits) predicted class


def run_model(bag: str, model: str, topics: Optional[Sequence[str]] = None,
              progress: Optional[Callable[[int, Optional[int]], None]] = None) -> ModelRun:
    """Read the bag and run every exit of the model on every frame (BagError if unreadable)."""
    import torch

    from anytime_infer.model.calibrate import softmax
    from anytime_infer.model.data import Preprocess, to_tensor_batch
    from anytime_infer.model.store import load_model, PROFILE, read_json, resolve_model_dir
    from anytime_infer.node.imageconv import BadInput, compressed_to_array, image_to_array, \
        to_model_input
    from anytime_infer.scheduler.profiles import profile_from_dict
    folder = resolve_model_dir(model)
    net, card = load_model(folder)
    raw = read_json(os.path.join(folder, PROFILE), 'profile')
    pre = card['preprocess']
    temps = raw['temperature']
    confs: List[np.ndarray] = []
    preds: List[np.ndarray] = []
    pending: List[np.ndarray] = []
    run = ModelRun(bag, BagContents(), list(card['classes']),
                   profile_from_dict(raw, name=folder), net.num_stages)

    def forward() -> None:
        if not pending:
            return
        with torch.inference_mode():
            outs = net(to_tensor_batch(np.stack(pending), Preprocess(**pre)))
        probs = [softmax(lg.numpy().astype(np.float64), temps[k]) for k, lg in enumerate(outs)]
        confs.append(np.stack([p.max(axis=1) for p in probs], axis=1))
        preds.append(np.stack([p.argmax(axis=1) for p in probs], axis=1))
        pending.clear()
        if progress:
            progress(len(run.good) + len(run.bad), None)

    def on_frame(f: Frame) -> None:
        try:
            compressed = hasattr(f.msg, 'format') and not hasattr(f.msg, 'encoding')
            arr, enc = (compressed_to_array if compressed else image_to_array)(f.msg,
                                                                               MAX_PIXELS)
            pending.append(to_model_input(arr, enc, pre['height'], pre['width'],
                                          pre['channels']))
            run.good.append(f)
            run.sizes[f.index] = (int(arr.shape[1]), int(arr.shape[0]))
        except (BadInput, ValueError) as e:
            run.bad[f.index] = str(e)
        f.msg = None          # the header's stamp and frame id stay on the frame
        if len(pending) >= CHUNK:
            forward()

    run.contents = read_bag(bag, topics, on_frame)
    forward()
    n = run.num_stages
    run.conf = np.concatenate(confs) if confs else np.zeros((0, n))
    run.pred = np.concatenate(preds).astype(np.int64) if preds else np.zeros((0, n), np.int64)
    if progress:
        progress(len(run.contents.frames), len(run.contents.frames))
    return run


def decide(run: ModelRun, policy: str, deadline_ms: float, seed: int = 0, rate: float = 1.0,
           depth: Optional[int] = None) -> Tuple[Dict, List[Dict], List[Tuple[str, int, bytes]]]:
    """Let one policy decide on the bag's arrivals: (report, rows, detections record)."""
    from anytime_infer.bagtypes import project_typestore
    from anytime_infer.scheduler.policies import make_policy
    from anytime_infer.scheduler.simulator import simulate, Stream
    from anytime_infer.scheduler.task import Task
    from anytime_infer.scheduler.timing import StageTimes
    from anytime_infer.scheduler.traces import Trace
    contents, good, n_exits = run.contents, run.good, run.num_stages
    correct = np.array([[run.classes[run.pred[i, k]] == (f.label or '')
                         for k in range(n_exits)] for i, f in enumerate(good)],
                       dtype=bool).reshape(len(good), n_exits)
    trace = Trace([str(f.index) for f in good], run.conf, correct)
    t0 = min(f.time_ns for f in contents.frames)
    arrivals = [((f.time_ns - t0) / 1e9 / rate, f.camera) for f in good]
    # Like a replay over DDS at --rate r on the bag's clock: the bag runs r times faster
    # than the stages, so arrivals and deadlines shrink by r here, and latencies are
    # reported back in bag time (x r).
    streams = [Stream(1.0, deadline_ms / 1000.0 / rate) for _ in contents.topics]
    pol = _without_wall_clock(make_policy(policy, run.profile, depth=depth,
                                          times=StageTimes(run.profile)))
    res = simulate(run.profile, trace, pol, streams, len(good), seed, charge_decisions=False,
                   arrivals=arrivals, samples=np.arange(len(good)))
    store = project_typestore()
    deadline_ns = int(round(deadline_ms * 1e6))
    by_index = {f.index: (i, r) for i, (f, r) in enumerate(zip(good, res.frames))}
    rows, record = [], []
    for f in contents.frames:
        t = (f.time_ns - t0) / 1e9
        sec, nanosec = divmod(f.stamp_ns, 10**9)
        header = SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec),
                                 frame_id=f.frame_id)
        topic = camera_of(f.topic) + '/detections'
        if f.index in run.bad:
            rows.append({'camera': f.camera, 'outcome': 'dropped', 'reason': 'bad_input',
                         'depth': 0, 'correct': False, 'latency_ms': None, 't': t})
            record.append((topic, f.time_ns, f.index, detection_array_cdr(
                store, header, 'dropped', 'bad_input', f.time_ns + deadline_ns, 0, None)))
            continue
        i, r = by_index[f.index]
        published = r.outcome != 'dropped'
        latency_ns = int(round(r.latency * rate * 1e9)) if published else 0
        rows.append({'camera': f.camera, 'outcome': r.outcome, 'reason': r.reason,
                     'depth': r.depth, 'correct': bool(r.correct and r.outcome == 'on_time'),
                     'latency_ms': round(r.latency * 1000.0 * rate, 6) if published else None,
                     't': t})
        result = None
        if published:
            k = r.depth - 1
            task = Task(i, f.camera, 0.0, 0.0, n_exits, stages_done=r.depth,
                        confidences=[float(c) for c in run.conf[i, :r.depth]])
            w, h = run.sizes[f.index]
            result = Result(int(run.pred[i, k]), run.classes[int(run.pred[i, k])],
                            float(run.conf[i, k]), w, h, r.depth, n_exits,
                            float(pol.expected_accuracy(task)))
        # Dropped frames carry latency 0: the simulator does not record when it drops.
        record.append((topic, f.time_ns + latency_ns, f.index, detection_array_cdr(
            store, header, r.outcome, r.reason, f.time_ns + deadline_ns, latency_ns, result)))
    record.sort(key=lambda x: (x[1], x[2]))   # publication order on the bag's clock
    rep = report(run.bag, 'deterministic', pol.name, contents, rows)
    return rep, rows, [(topic, t, raw) for topic, t, _, raw in record]


def _no_time() -> float:
    return 0.0


def _without_wall_clock(pol):
    """
    Make a policy time its own decisions as 0 (and the policies an oracle compares with).

    Policies measure their decision time and plan for it (the node's worker pays it); here
    that would make plans depend on how busy the machine was: identical bags gave
    different outputs. The simulator's stage times are the seeded draws alone.
    """
    pol.clock = _no_time
    if getattr(pol, 'best_of', None):
        pol.best_of = [lambda make=make: _without_wall_clock(make()) for make in pol.best_of]
    return pol
