"""
Recorded drives: make bags, replay them (through the node or deterministically), score them.

Modules:

- ``bags``: reading any rosbag2 bag (image topics by type, ground truth), finding bags.
- ``making``: ``make_bag``, bags of labelled camera frames with ground truth.
- ``dds``: replay through the real node over DDS on sim time.
- ``deterministic``: replay without DDS or wall clock (model on every frame, the
  scheduler's simulator deciding), byte-identical from run to run.
- ``detections``: the ``DetectionArray`` per frame and ``detections.mcap``.
- ``reports``: per-camera and total summaries, ``report.json``/``.md``, frame rows, plots.
- ``command``: ``replay``, one bag once per policy (the ``replay`` command).
- ``fleet``, ``fleet_report``: many bags on Ray (the ``evaluate`` command), fleet summary.
"""
from anytime_infer.replay.bags import (BagContents, BagError, camera_of, DETECTIONS, find_bags,
                                       Frame, IMAGE_TYPES, read_bag)
from anytime_infer.replay.command import replay
from anytime_infer.replay.detections import write_detections
from anytime_infer.replay.making import make_bag
from anytime_infer.replay.reports import report, report_markdown, summarise, write_outputs

__all__ = ['BagContents', 'BagError', 'DETECTIONS', 'Frame', 'IMAGE_TYPES', 'camera_of',
           'find_bags', 'make_bag', 'read_bag', 'replay', 'report', 'report_markdown',
           'summarise', 'write_detections', 'write_outputs']
