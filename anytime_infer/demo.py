"""
The demo and the node benchmark: the real node as a separate process, frames through it.

``anytime-infer demo`` starts the node (as the launch file does), plays a bundled model's
sample frames through it on two cameras with the camera player
(``anytime_infer.camera_player``) and prints a report; ``bench-node`` sends large frames
at rising rates. The camera player's names stay importable from here.
"""
import os
import subprocess
import time

from anytime_infer.camera_player import (export_samples, frame_message, load_samples,
                                         node_command, play, SAMPLES, Tally)
import numpy as np

__all__ = ['SAMPLES', 'Tally', 'bench_node', 'export_samples', 'frame_message',
           'load_samples', 'node_command', 'play', 'run_demo']


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
    print(f'  (before them {len(tally.primed)} priming frames, not counted, until each camera '
          'had an answer: the path from camera to detections was open end to end)')
    return 0 if s['answered'] else 1


def bench_node(model: str = 'fashion_mnist', rates=(5.0, 10.0, 15.0, 20.0, 30.0),
               seconds: float = 6.0, width: int = 1280, height: int = 720,
               reliability: str = 'reliable', planner: str = 'auto') -> str:
    """
    Two rgb8 cameras of ``width`` x ``height`` into the real node, rate by rate.

    Reports, per rate, frames sent, received by the node (its own counter), outcomes,
    end-to-end latency (arrival at the node to publication) and the node's per-frame
    conversion time; frames sent but never received were lost in transport; and, from
    ``/diagnostics``, the worker's overhead per stage run (p50 / p99: its busy time not
    spent in the stage itself) and that overhead's share of its busy time, with the
    planner mode (``planner``: auto, thread or inline).
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
                                                    '-p', f'qos_reliability:={reliability}',
                                                    '-p', f'planner:={planner}']),
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
             f'{os.environ.get("FASTDDS_BUILTIN_TRANSPORTS")}, planner {planner}',
             '', '| rate per camera (Hz) | sent | received by node | outcomes | on time | '
             'mean depth | latency p50 / p99 (ms) | conversion p50 (ms) | worker overhead '
             'per stage p50 / p99 (ms) | overhead share of busy time | planner |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
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
            primed = sum(tally.primed.values())     # received and answered, not in `sent`
            lines.append(f'| {rate:g} | {s["sent"]} | {got - before - primed} | '
                         f'{s["answered"]} | '
                         f'{s["on_time"]} | {s["mean_depth"]:.2f} | '
                         f'{s["latency_ms_p50"] or 0:.1f} / {s["latency_ms_p99"] or 0:.1f} | '
                         f'{diag.get("conversion_ms_p50", "?")} | '
                         f'{_fmt(diag.get("overhead_ms_p50"))} / '
                         f'{_fmt(diag.get("overhead_ms_p99"))} | '
                         f'{_fmt(diag.get("overhead_share"))} | {diag.get("planner", "?")} |')
            before = got
    finally:
        node.destroy_node()
        rclpy.shutdown()
        proc.terminate()
        proc.wait(timeout=20)
    return '\n'.join(lines)


def _fmt(value) -> str:
    """Return a /diagnostics number with 3 decimals ('?' where it was not reported)."""
    try:
        return f'{float(value):.3f}'
    except (TypeError, ValueError):
        return '?'
