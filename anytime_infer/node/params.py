"""The node's parameters: declared once with descriptors, read into a typed config."""
from dataclasses import dataclass, field
from typing import List

from anytime_infer.scheduler.policies import POLICY_NAMES

DEVICES_HELP = 'auto (cuda when available, else cpu), cpu, cuda or cuda:N'


@dataclass
class ParamSpec:
    """One parameter: default, description, and (for numbers) an inclusive range."""

    name: str
    default: object
    description: str
    low: float = None
    high: float = None
    choices: tuple = ()


SPECS = [
    ParamSpec('model', 'fashion_mnist', 'bundled model name or path to a model folder'),
    ParamSpec('device', 'auto', 'torch device: ' + DEVICES_HELP),
    ParamSpec('policy', 'imprecise_dp', 'scheduling policy',
              choices=tuple(p for p in POLICY_NAMES if p != 'oracle')),
    ParamSpec('fixed_depth', 2, 'depth for policy fixed_depth', 1, 16),
    ParamSpec('camera_topics', ['camera/image_raw'],
              'image topics (sensor_msgs/Image; names ending in /compressed are '
              'sensor_msgs/CompressedImage)'),
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
              '(best_effort = sensor data QoS)', choices=('best_effort', 'reliable')),
    ParamSpec('qos_depth', 5, 'image subscription queue depth', 1, 1000),
    ParamSpec('publish_dropped', True, 'publish a DetectionArray for dropped frames too'),
    ParamSpec('debug_image', False, 'publish an annotated image on '
              '<camera>/detections/image'),
    ParamSpec('status_rate_hz', 1.0, 'rate of SchedulerStatus and /diagnostics', 0.01, 100.0),
    ParamSpec('percentile', 99, 'stage-time percentile the plans use', choices=(50, 95, 99)),
    ParamSpec('roi_topics', [''], 'per camera, a DetectionArray topic whose detections` roi '
              'fields are regions to classify in its frames (one task each, with the frame '
              'deadline); empty: classify the whole frame'),
    ParamSpec('roi_max_age_s', 0.2, 'use the latest regions of a camera when none carry the '
              'exact stamp of the frame and they are at most this much older (s)', 0.0, 60.0),
    ParamSpec('torch_threads', 1, 'CPU threads for torch (0 = torch default); one leaves the '
              'other cores to DDS and image conversion', 0, 256),
    ParamSpec('autostart', True, 'configure and activate at start (no lifecycle manager)'),
]


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
    roi_topics: List[str] = field(default_factory=list)
    roi_max_age_s: float = 0.2
    torch_threads: int = 1
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


def validate(name: str, value) -> str:
    """Return why a value is refused ('' when it is fine)."""
    spec = next((s for s in SPECS if s.name == name), None)
    if spec is None:
        return ''
    values = value if isinstance(value, (list, tuple)) else [value]
    if spec.choices and value not in spec.choices:
        return f'{name} must be one of {", ".join(map(str, spec.choices))}, not {value!r}'
    if spec.low is not None:
        for v in values:
            if not isinstance(v, (int, float)) or not spec.low <= v <= spec.high:
                return f'{name} must lie in [{spec.low}, {spec.high}], not {v!r}'
    if name == 'camera_topics':
        if not values or any(not isinstance(t, str) or not t.strip() for t in values):
            return 'camera_topics must name at least one topic'
        if len(set(values)) != len(values):
            return 'camera_topics has duplicates'
    if name == 'device' and not (value in ('auto', 'cpu', 'cuda') or
                                 str(value).startswith('cuda:')):
        return f'device must be {DEVICES_HELP}, not {value!r}'
    if name == 'model' and not str(value).strip():
        return 'model must name a bundled model or a folder'
    return ''
