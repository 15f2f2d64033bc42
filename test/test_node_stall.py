"""
A transient stall of the node process, as a CPU quota makes it (issue 16.1, through the node).

Two cameras, 56x56 ``mono8`` at 30 Hz, the shipped parameters (deadline 50 ms). Normal
traffic, then 6 s of SIGSTOP 80 ms / SIGCONT 40 ms on the node's PID, then normal traffic
again: the depth comes back to its pre-stall value within a few seconds (before the fix
it stayed at 1.00 for good), and ``/diagnostics`` reports the executor WARN during the
stall and OK after.

Deadlines count from the header stamp (``deadline_from:=stamp``), as a camera driver's
frames would: a frame sent during an 80-ms stop is older than the 50-ms deadline when the
node wakes, on any machine. Counted from arrival, a fast machine answers the frames queued
during each stop within the 40 ms it runs and rarely has a stage under way when a stop
lands, so it sees nothing to report (CI, stop 18: 0.997 on time during the stall, no WARN).
"""
from array import array
import os
import signal
import threading
import time

from node_helpers import Peer, start_node, stop_node
import numpy as np
import pytest

pytestmark = pytest.mark.slow
EXECUTOR_STATUS = 'anytime_infer: executor'


def _has_health() -> bool:
    from anytime_infer.executor import Executor
    return hasattr(Executor, 'health')


def mono8_frames(samples, count: int = 32, size: int = 56):
    """Frames as a grey camera sends them: 56x56 mono8."""
    import cv2
    from sensor_msgs.msg import Image
    out = []
    for img in samples['images'][:count]:
        grey = cv2.resize(img[..., 0] if img.ndim == 3 else img, (size, size))
        out.append(Image(height=size, width=size, encoding='mono8', step=size,
                         data=array('B', np.ascontiguousarray(grey).tobytes())))
    return out


class Camera(threading.Thread):
    """Both cameras at 30 Hz from a thread, stamped with the send time."""

    def __init__(self, peer, frames) -> None:
        super().__init__(daemon=True)
        self.peer, self.frames = peer, frames
        self.stop = threading.Event()

    def run(self) -> None:
        t, i = time.monotonic(), 0
        while not self.stop.is_set():
            for cam in (0, 1):
                msg = self.frames[(2 * i + cam) % len(self.frames)]
                stamp = self.peer.node.get_clock().now().nanoseconds
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
                self.peer.pubs[cam].publish(msg)
            i += 1
            t += 1 / 30
            self.stop.wait(max(t - time.monotonic(), 0.0))


def window(peer, t0: float, t1: float):
    """Mean depth and on-time share of the frames sent between t0 and t1 (s, ROS clock)."""
    from anytime_infer.msg import DetectionArray
    outs = [m for (_, s), m in list(peer.answers.items()) if t0 * 1e9 <= s < t1 * 1e9]
    answered = [m for m in outs if m.outcome != DetectionArray.DROPPED and m.detections]
    depth = float(np.mean([m.detections[0].depth_reached for m in answered])) \
        if answered else 0.0
    on_time = sum(m.outcome == DetectionArray.ON_TIME for m in outs) / max(len(outs), 1)
    return depth, on_time, len(outs)


def node_levels(peer, t0: float, t1: float):
    """
    Return the node's /diagnostics stamped between t0 and t1 (s): time, worst level, WARNs.

    The worst level over the node's statuses (scheduler and executor): a stall shows in
    the executor's measured stage times where a stop hits a stage, and in the scheduler's
    misses of the last seconds where it hits between stages.
    """
    out = []
    for arr in list(peer.diagnostics):
        t = arr.header.stamp.sec + arr.header.stamp.nanosec * 1e-9
        mine = [st for st in arr.status if st.name.startswith('anytime_infer')]
        if mine and t0 <= t < t1:
            warns = [(st.name, st.message) for st in mine if st.level != b'\x00']
            out.append((round(t, 2), max(st.level for st in mine), warns))
    return out


@pytest.mark.skipif(not _has_health(), reason='Executor.health() is not in yet (issue 16.1: '
                    'the executor reports stalls); this test runs once it is')
def test_stall_recovers_depth_and_is_reported():
    from diagnostic_msgs.msg import DiagnosticStatus
    import rclpy
    rclpy.init()
    node = rclpy.create_node('stall_tester')
    proc = start_node(['-p', 'deadline_from:=stamp'])
    try:
        peer = Peer(node)
        peer.wait_active()
        cam = Camera(peer, mono8_frames(peer.samples))
        now = lambda: node.get_clock().now().nanoseconds * 1e-9  # noqa: E731
        cam.start()
        try:
            peer.spin(2.0)                           # warm-up
            t_normal = now()
            peer.spin(4.0)
            t_stall = now()
            end = time.monotonic() + 6.0
            while time.monotonic() < end:            # 6 s at a third of the CPU time
                os.kill(proc.pid, signal.SIGSTOP)
                peer.spin(0.08)
                os.kill(proc.pid, signal.SIGCONT)
                peer.spin(0.04)
            t_after = now()
            peer.spin(8.0)
            t_end = now()
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            cam.stop.set()
            cam.join()
        peer.spin(2.0)
        before = window(peer, t_normal, t_stall)
        during = window(peer, t_stall, t_after)
        # After: 2-s windows from the end of the stall on. The defect kept every one of
        # them at depth 1.00 (or dropped every frame); other load on a shared machine
        # only makes some windows worse, so the best one must be back at the level.
        after = [window(peer, t, t + 2.0) for t in np.arange(t_after, t_end - 2.0, 0.5)]
        best = max(after)
        print(f'depth / on-time share / frames: before {before}, during {during}, after '
              f'(2-s windows) {[tuple(round(x, 2) for x in w) for w in after]}')
        assert before[2] > 150 and sum(w[2] for w in after[::4]) > 150, (before, after)
        assert best[0] >= before[0] - 0.3, f'depth at most {best[0]:.2f} after the stall, ' \
            f'{before[0]:.2f} before'
        assert max(w[1] for w in after) >= before[1] - 0.05, (before, after)
        t_back = next(t for t, w in zip(np.arange(t_after, t_end, 0.5), after)
                      if w[0] >= before[0] - 0.3)
        print(f'depth back within {t_back - t_after + 2.0:.1f} s of the stall')
        levels = node_levels(peer, t_stall, t_after + 2.0)
        print('diagnostics during the stall:', levels)
        assert any(lv == DiagnosticStatus.WARN for _, lv, _ in levels), \
            "the node's diagnostics never WARN during the stall"
        executor = [w for _, _, ws in levels for w in ws if w[0] == EXECUTOR_STATUS]
        print('executor WARNs during the stall:', executor)
        # OK again after: the executor's stall report clears (the scheduler's misses of the
        # last 5 s can stay WARN when other work keeps the machine busy: printed).
        after_levels = node_levels(peer, t_after + 1.0, t_end + 2.0)
        print('diagnostics after the stall:', after_levels)
        assert any(not any(name == EXECUTOR_STATUS for name, _ in warns)
                   for _, _, warns in after_levels), \
            f'the executor never OK again after the stall: {after_levels}'
        assert proc.poll() is None, 'the node died'
    finally:
        print(stop_node(proc)[-3000:])
        node.destroy_node()
        rclpy.shutdown()
