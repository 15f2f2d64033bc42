"""
Reading recorded drives: image frames and ground truth from any rosbag2 bag.

``read_bag`` opens a bag (mcap or sqlite3, a bag folder or a bare ``.mcap`` file) with
rosbags, finds the image topics by type (or takes ``topics``) and ground truth on
``<camera>/ground_truth`` (a ``DetectionArray`` sharing the frame's header stamp). A bag
that cannot be opened raises ``BagError``; a fault part-way ends reading and is kept in
``BagContents.errors`` with the frames read before it. ``find_bags`` lists the bags under
folders.
"""
from dataclasses import dataclass, field
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
DETECTIONS = 'anytime_infer/msg/DetectionArray'
GROUND_TRUTH = '/ground_truth'


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
    msg: object                  # the deserialised message (rosbags); None once released
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


def stamp_ns(header) -> int:
    """Header stamp in nanoseconds."""
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def read_bag(path: str, topics: Optional[Sequence[str]] = None,
             on_frame: Optional[Callable[[Frame], None]] = None) -> BagContents:
    """
    Read image frames (and ground truth) from a rosbag2 bag, mcap or sqlite3.

    ``on_frame`` is called with every frame as it is read; it may set ``frame.msg`` to
    None to let the image go (a long drive need not be held in memory).
    """
    from anytime_infer.bagtypes import project_typestore
    from rosbags.highlevel import AnyReader
    if not os.path.exists(path):
        raise BagError(f'{path}: no such bag')
    out = BagContents()
    try:
        reader = AnyReader([_bag_path(path)], default_typestore=project_typestore())
        reader.open()
    except Exception as e:  # noqa: B902 - rosbags raises many kinds for a bad file
        why = ' '.join(str(e).split())   # one line (YAML errors span several)
        raise BagError(f'{path}: not a readable rosbag2 bag ({why})') from None
    try:
        image_conns = [c for c in reader.connections if c.msgtype in IMAGE_TYPES and
                       (not topics or c.topic in topics)]
        if not image_conns:
            found = sorted({f'{c.topic} ({c.msgtype})' for c in reader.connections})
            raise BagError(f'{path}: no image topics (sensor_msgs Image/CompressedImage) '
                           f'among {found or "nothing"}')
        out.topics = sorted({c.topic for c in image_conns})
        cams = {t: i for i, t in enumerate(out.topics)}
        cam_names = {camera_of(t) for t in out.topics}
        gt_conns = [c for c in reader.connections if c.msgtype == DETECTIONS and
                    c.topic.endswith(GROUND_TRUTH) and
                    c.topic[:-len(GROUND_TRUTH)] in cam_names]
        out.has_ground_truth = bool(gt_conns)
        truth: Dict[Tuple[str, int], str] = {}
        messages = reader.messages(connections=image_conns + gt_conns)
        while True:
            try:
                conn, t, raw = next(messages)
                msg = reader.deserialize(raw, conn.msgtype)
            except StopIteration:
                break
            except Exception as e:  # noqa: B902 - a corrupt chunk ends reading, kept as error
                out.errors.append(f'{path}: reading stopped after {len(out.frames)} frames: '
                                  f'{e}')
                break
            if conn.msgtype == DETECTIONS:
                if msg.detections:
                    cam = conn.topic[:-len(GROUND_TRUTH)]
                    truth[(cam, stamp_ns(msg.header))] = msg.detections[0].label
                continue
            frame = Frame(len(out.frames), cams[conn.topic], conn.topic, t,
                          stamp_ns(msg.header), msg.header.frame_id, msg)
            out.frames.append(frame)
            if on_frame:
                on_frame(frame)
        for f in out.frames:
            f.label = truth.get((camera_of(f.topic), f.stamp_ns))
    finally:
        reader.close()
    if not out.frames and not out.errors:
        raise BagError(f'{path}: the image topics hold no messages')
    return out


def _bag_path(path: str) -> Path:
    p = Path(path)
    if p.is_file() and p.suffix == '.mcap':   # a bare mcap file: use its folder if bagged
        meta = p.parent / 'metadata.yaml'
        return p.parent if meta.exists() else p
    return p


def is_bag(path: str) -> bool:
    """Return whether a path is a bag: a folder with metadata.yaml, or an .mcap file."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, 'metadata.yaml'))
    return path.endswith('.mcap')


def find_bags(paths: Sequence[str], exclude: Sequence[str] = ()) -> List[Tuple[str, str]]:
    """
    Return (bag path, path relative to the argument it was found under) of every bag.

    A bag folder (``metadata.yaml``) is one bag, a loose ``.mcap`` file another; folders
    are searched recursively (hidden ones and ``exclude``, e.g. the output folder, are
    skipped), sorted by relative path. A path that is neither a bag nor a folder is
    returned as it is, so that it fails as a bag, with its error.
    """
    skip = {os.path.realpath(p) for p in exclude}
    found: List[Tuple[str, str]] = []
    for root in paths:
        if is_bag(root) or not os.path.isdir(root):
            found.append((root, os.path.basename(os.path.normpath(root))))
            continue
        under: List[Tuple[str, str]] = []
        for here, dirs, files in os.walk(root):
            dirs.sort()
            keep = []
            for d in dirs:
                full = os.path.join(here, d)
                if d.startswith('.') or os.path.realpath(full) in skip:
                    continue
                if is_bag(full):
                    under.append((full, os.path.relpath(full, root)))
                else:
                    keep.append(d)
            dirs[:] = keep
            under += [(os.path.join(here, f), os.path.relpath(os.path.join(here, f), root))
                      for f in files if f.endswith('.mcap') and not f.startswith('.')]
        found += sorted(under, key=lambda x: x[1])
    return found
