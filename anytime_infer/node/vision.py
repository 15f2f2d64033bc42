"""
Our answers as vision_msgs, for trackers and planners that read the standard messages.

Per answered frame (on time or late) a ``vision_msgs/Detection2DArray`` on
``<camera>/detections_2d``: the image header copied; one ``Detection2D`` per classified
region, its bbox the region (center + size, pixels), ``results[0].hypothesis.class_id`` the
label and ``score`` the calibrated confidence. The model's class map as a
``vision_msgs/LabelInfo`` (transient local) on ``~/label_info``. Depth reached, expected
accuracy, deadline and outcome exist only in our own ``DetectionArray``; a dropped frame
(no answer) has no Detection2DArray, since an empty one would read as "nothing there"
(a frame with no region to classify, answered, has an empty one).

The conversion is pure (plain dataclasses, tested everywhere); the builders fill the
messages where vision_msgs is installed (a ROS install: it is on no package registry here).
"""
from dataclasses import dataclass
import importlib.util
from typing import Any, Dict, List, Optional, Sequence, Tuple

LABEL_INFO_TOPIC = '~/label_info'
DETECTIONS_2D_SUFFIX = 'detections_2d'


@dataclass(frozen=True)
class Box2D:
    """An axis-aligned box in pixels: center and size (vision_msgs/BoundingBox2D)."""

    center_x: float
    center_y: float
    size_x: float
    size_y: float


@dataclass(frozen=True)
class Detection2DFields:
    """The fields of one vision_msgs/Detection2D: one hypothesis on one region."""

    class_id: str          # results[0].hypothesis.class_id: the label
    score: float           # results[0].hypothesis.score: the calibrated confidence
    bbox: Box2D


def region_box(roi: Sequence[float]) -> Box2D:
    """Return the box of a region ``(x, y, width, height)`` (top-left corner, pixels)."""
    x, y, w, h = (float(v) for v in roi)
    return Box2D(center_x=x + w / 2.0, center_y=y + h / 2.0, size_x=w, size_y=h)


def detections_2d(results: Sequence[Any]) -> List[Detection2DFields]:
    """
    Convert a frame's results (``executor.CropResult``: label, confidence, roi) to fields.

    One entry per result, in order: label as class_id, calibrated confidence as score,
    the classified region as bbox.
    """
    return [Detection2DFields(class_id=str(r.label), score=float(r.confidence),
                              bbox=region_box(r.roi)) for r in results]


def label_map(classes: Sequence[str]) -> List[Tuple[int, str]]:
    """Return the class map of LabelInfo: (index in the model's class list, name)."""
    return [(i, str(name)) for i, name in enumerate(classes)]


def vision_msgs_available() -> bool:
    """Tell whether the vision_msgs Python messages can be imported."""
    return importlib.util.find_spec('vision_msgs') is not None


def detection2d_array_msg(header, fields: Sequence[Detection2DFields]):
    """Build a vision_msgs/Detection2DArray (needs vision_msgs) with ``header`` copied."""
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
    msg = Detection2DArray(header=header)
    for f in fields:
        d = Detection2D(header=header)
        d.bbox.center.position.x, d.bbox.center.position.y = f.bbox.center_x, f.bbox.center_y
        d.bbox.size_x, d.bbox.size_y = f.bbox.size_x, f.bbox.size_y
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id, hyp.hypothesis.score = f.class_id, f.score
        d.results.append(hyp)
        msg.detections.append(d)
    return msg


def label_info_msg(classes: Sequence[str], stamp=None):
    """Build a vision_msgs/LabelInfo (needs vision_msgs) with the model's class map."""
    from vision_msgs.msg import LabelInfo, VisionClass
    msg = LabelInfo(class_map=[VisionClass(class_id=i, class_name=n)
                               for i, n in label_map(classes)])
    if stamp is not None:
        msg.header.stamp = stamp
    return msg


class VisionOutputs:
    """The node's vision_msgs publishers: made at configure, destroyed at cleanup."""

    def __init__(self, node, cameras: Sequence[str], classes: Sequence[str]) -> None:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from vision_msgs.msg import Detection2DArray, LabelInfo
        self.node = node
        self.pubs: Dict[str, Any] = {
            cam: node.create_publisher(Detection2DArray, f'{cam}/{DETECTIONS_2D_SUFFIX}', 1000)
            for cam in cameras}
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.label_pub = node.create_publisher(LabelInfo, LABEL_INFO_TOPIC, latched)
        self.label_pub.publish(label_info_msg(classes, node.get_clock().now().to_msg()))

    @classmethod
    def create(cls, node, enabled: bool, cameras: Sequence[str],
               classes: Sequence[str]) -> Optional['VisionOutputs']:
        """Make the publishers when enabled and vision_msgs imports; else say why, once."""
        if not enabled:
            return None
        if not vision_msgs_available():
            node.get_logger().info(
                'vision_msgs is not installed: publishing anytime_infer/DetectionArray only '
                f'(no <camera>/{DETECTIONS_2D_SUFFIX}, no {LABEL_INFO_TOPIC})')
            return None
        return cls(node, cameras, classes)

    def publish(self, camera: str, header, answered: bool, results: Sequence[Any]) -> None:
        """Publish an answered frame's results on the camera's detections_2d topic."""
        pub = self.pubs.get(camera)
        if pub is not None and answered:
            pub.publish(detection2d_array_msg(header, detections_2d(results)))

    def destroy(self) -> None:
        """Destroy every publisher made in the constructor."""
        for pub in list(self.pubs.values()) + [self.label_pub]:
            self.node.destroy_publisher(pub)
        self.pubs = {}
