"""
The node's parameters: declared once with descriptors, read into a typed config.

Every parameter says when a new value can take effect (``ParamSpec.applies``):

- ``run``: at once, between two frames, also while active;
- ``activate``: the subscriptions are made at activate with it (refused while active);
- ``configure``: the model, executor or publishers are built with it (refused while
  configured: deactivate and clean up first);
- ``start``: read once when the node starts (always refused afterwards).
"""
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from anytime_infer.scheduler.policies import POLICY_NAMES

DEVICES_HELP = 'auto (cuda when available, else cpu), cpu, cuda or cuda:N'
RUN, ACTIVATE, CONFIGURE, START = 'run', 'activate', 'configure', 'start'
# Per-camera arrays: entry i belongs to camera_topics[i]; missing entries use a default.
PER_CAMERA = ('deadlines_ms', 'weights', 'roi_topics')


@dataclass
class ParamSpec:
    """One parameter: default, description, (for numbers) an inclusive range, and when."""

    name: str
    default: object
    description: str
    low: float = None
    high: float = None
    choices: tuple = ()
    applies: str = RUN


SPECS = [
    ParamSpec('model', 'fashion_mnist', 'bundled model name or path to a model folder',
              applies=CONFIGURE),
    ParamSpec('device', 'auto', 'torch device: ' + DEVICES_HELP, applies=CONFIGURE),
    ParamSpec('policy', 'imprecise_dp', 'scheduling policy',
              choices=tuple(p for p in POLICY_NAMES if p != 'oracle')),
    ParamSpec('fixed_depth', 2, 'depth for policy fixed_depth', 1, 16),
    ParamSpec('camera_topics', ['camera/image_raw'],
              'image topics (sensor_msgs/Image; names ending in /compressed are '
              'sensor_msgs/CompressedImage)', applies=CONFIGURE),
    ParamSpec('deadline_ms', 100.0, 'relative deadline of every frame (ms)', 0.1, 60000.0),
    ParamSpec('deadlines_ms', [0.0], 'per-camera relative deadlines (ms); 0 or missing '
              'entries use deadline_ms', 0.0, 60000.0),
    ParamSpec('weights', [1.0], 'per-camera weights (reward = weight x accuracy); missing '
              'entries are 1', 0.0, 1000.0),
    ParamSpec('deadline_from', 'arrival', "deadlines count from the frame's arrival at the "
              'node or from its header stamp', choices=('arrival', 'stamp')),
    ParamSpec('stamp_tolerance_s', 10.0, 'frames whose header stamp is further than this '
              'from the node clock (future or past) are dropped as bad_input', 0.0, 1e6),
    ParamSpec('max_queue', 64, 'frames queued or in progress before new ones are dropped '
              '(queue_full)', 1, 100000),
    ParamSpec('max_image_pixels', 16777216, 'larger images are dropped as bad_input', 1,
              1 << 30),
    ParamSpec('qos_reliability', 'best_effort', 'image subscription reliability '
              '(best_effort = sensor data QoS)', choices=('best_effort', 'reliable'),
              applies=ACTIVATE),
    ParamSpec('qos_depth', 5, 'image subscription queue depth', 1, 1000, applies=ACTIVATE),
    ParamSpec('publish_dropped', True, 'publish a DetectionArray for dropped frames too'),
    ParamSpec('debug_image', False, 'publish an annotated image on '
              '<camera>/detections/image'),
    ParamSpec('status_rate_hz', 1.0, 'rate of SchedulerStatus and /diagnostics', 0.01, 100.0),
    ParamSpec('percentile', 99, 'stage-time percentile the plans use', choices=(50, 95, 99),
              applies=CONFIGURE),
    ParamSpec('planner', 'auto', 'where imprecise_dp plans: thread (a planner thread while '
              'a stage runs; the worker looks the plan up), inline (at each stage boundary), '
              'auto (thread where a measured decision costs a stage or more)',
              choices=('auto', 'thread', 'inline'), applies=CONFIGURE),
    ParamSpec('roi_topics', [''], 'per camera, a DetectionArray topic whose detections` roi '
              'fields are regions to classify in its frames (one task each, with the frame '
              'deadline); empty: classify the whole frame', applies=ACTIVATE),
    ParamSpec('roi_max_age_s', 0.2, 'use the latest regions of a camera when none carry the '
              'exact stamp of the frame and they are at most this much older (s)', 0.0, 60.0),
    ParamSpec('torch_threads', 1, 'CPU threads for torch (0 = torch default); one leaves the '
              'other cores to DDS and image conversion', 0, 256, applies=CONFIGURE),
    ParamSpec('vision_msgs', True, 'also publish vision_msgs/Detection2DArray on '
              '<camera>/detections_2d and LabelInfo on ~/label_info (where vision_msgs is '
              'installed)', applies=CONFIGURE),
    ParamSpec('autostart', True, 'configure and activate at start (no lifecycle manager)',
              applies=START),
]
SPEC: Dict[str, ParamSpec] = {s.name: s for s in SPECS}


@dataclass
class NodeConfig:
    """Typed, validated parameter values."""

    model: str = 'fashion_mnist'
    device: str = 'auto'
    policy: str = 'imprecise_dp'
    fixed_depth: int = 2
    camera_topics: List[str] = field(default_factory=lambda: ['camera/image_raw'])
    deadline_ms: float = 100.0
    deadlines_ms: List[float] = field(default_factory=list)
    weights: List[float] = field(default_factory=list)
    deadline_from: str = 'arrival'
    stamp_tolerance_s: float = 10.0
    max_queue: int = 64
    max_image_pixels: int = 16777216
    qos_reliability: str = 'best_effort'
    qos_depth: int = 5
    publish_dropped: bool = True
    debug_image: bool = False
    status_rate_hz: float = 1.0
    percentile: int = 99
    planner: str = 'auto'
    roi_topics: List[str] = field(default_factory=list)
    roi_max_age_s: float = 0.2
    torch_threads: int = 1
    vision_msgs: bool = True
    autostart: bool = True

    def deadline_s(self, camera: int) -> float:
        """Relative deadline (s) of a camera."""
        per = self.deadlines_ms[camera] if camera < len(self.deadlines_ms) else 0.0
        return (per if per > 0 else self.deadline_ms) / 1000.0

    def roi_topic(self, camera: int) -> str:
        """Return the regions-of-interest topic of a camera ('' for whole frames)."""
        return self.roi_topics[camera] if camera < len(self.roi_topics) else ''

    def weight(self, camera: int) -> float:
        """Weight of a camera."""
        return self.weights[camera] if camera < len(self.weights) else 1.0


def is_array(value) -> bool:
    """
    Tell whether a parameter value is an array.

    rclpy delivers arrays as ``list`` when declared or read from a file but as
    ``array.array`` (DOUBLE_ARRAY, INTEGER_ARRAY) when set through SetParameters.
    """
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def normalized(name: str, value):
    """Return a parameter value as NodeConfig holds it (arrays as plain lists)."""
    if not is_array(value):
        return value
    if name in ('deadlines_ms', 'weights'):
        return [float(v) for v in value]
    return [str(v) if isinstance(v, str) else v for v in value]


def validate(name: str, value, cameras: Optional[int] = None) -> str:
    """
    Return why a value is refused ('' when it is fine).

    ``cameras`` (the number of camera topics) bounds the length of the per-camera arrays:
    at most one entry per camera (fewer: the missing ones take the default).
    """
    spec = SPEC.get(name)
    if spec is None:
        return ''
    array_spec = isinstance(spec.default, list)
    if array_spec != is_array(value):
        return (f'{name} must be an array, not {value!r}' if array_spec else
                f'{name} must be a single value, not {value!r}')
    values = list(value) if array_spec else [value]
    if spec.choices and value not in spec.choices:
        return f'{name} must be one of {", ".join(map(str, spec.choices))}, not {value!r}'
    if spec.low is not None:
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                    not spec.low <= v <= spec.high:
                return f'{name} must lie in [{spec.low}, {spec.high}], not {v!r}'
    if name == 'camera_topics':
        if not values or any(not isinstance(t, str) or not t.strip() for t in values):
            return 'camera_topics must name at least one topic'
        if len(set(values)) != len(values):
            return 'camera_topics has duplicates'
    if name == 'roi_topics' and any(not isinstance(t, str) for t in values):
        return f'roi_topics must be topic names (or empty), not {value!r}'
    if name in PER_CAMERA and cameras is not None and len(values) > cameras:
        return (f'{name} has {len(values)} entries for {cameras} camera(s) in camera_topics: '
                'at most one per camera (missing entries take the default)')
    if name == 'device' and not (value in ('auto', 'cpu', 'cuda') or
                                 str(value).startswith('cuda:')):
        return f'device must be {DEVICES_HELP}, not {value!r}'
    if name == 'model' and not str(value).strip():
        return 'model must name a bundled model or a folder'
    return ''


def validate_config(cfg: NodeConfig) -> List[str]:
    """Return why a whole configuration is refused (each value, and arrays per camera)."""
    cameras = len(cfg.camera_topics) if is_array(cfg.camera_topics) else None
    return [why for why in (validate(s.name, getattr(cfg, s.name), cameras) for s in SPECS)
            if why]
