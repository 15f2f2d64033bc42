"""
Soak benchmark: the real node over DDS at a chosen overload for minutes, sampled.

``anytime-infer soak`` starts the node as a separate process (as the launch file does,
with ``config/anytime_infer.yaml``), calibrates the frame rate to the node's own measured
capacity, then drives N cameras at ``load`` x that capacity for the chosen time. Every
``interval`` seconds it samples the node process (RSS, open descriptors, threads, from
``/proc/<pid>``) and its ``~/status`` counters, and on the subscriber side counts the
answers per frame (camera, header stamp) to find any frame answered twice. It writes
``soak.json``, ``soak.md`` (table and targets) and ``soak.png`` and prints PASS/FAIL per
target.

Capacity: during a light calibration phase (every frame at full depth) the node measures
its stage times; the full-depth time is the number of stages x the median measured stage
time it reports in ``/diagnostics`` (``stage_ms_p50``), and the soak's total frame rate is
``load / full-depth time``. (The node's own ``estimated_load`` plans on the p99 stage
time, which on a busy machine is several times the median; it is reported beside, as the
load the node believed it saw.) The camera player is a Python process of its own: on a
busy machine it may not reach that rate, and the report says what it reached instead of
pretending.
"""
from collections import deque
from dataclasses import asdict, dataclass, field
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

RSS_GROWTH_MB = 20.0
LATE_SHARE = 0.01
THREADS_TOLERANCE = 2      # a leak grows without bound; DDS may add a thread or two
FDS_TOLERANCE = 8          # shared-memory segments and TCP connections come and go
STATUS_TOPIC = '/anytime_infer/status'


@dataclass
class SoakConfig:
    """What to drive and for how long."""

    cameras: int = 2
    load: float = 3.0
    duration_s: float = 600.0
    interval_s: float = 10.0
    out: str = 'soak'
    model: str = 'fashion_mnist'
    qos: str = 'best_effort'           # the shipped config's image QoS
    calibration_s: float = 8.0
    calibration_hz: float = 20.0       # per camera, light
    warmup_s: Optional[float] = None   # RSS baseline; default min(60 s, duration / 3)
    settle_s: float = 3.0
    params: Optional[str] = None       # params file (default: the repo's config)
    extra_params: List[str] = field(default_factory=list)

    def baseline_s(self) -> float:
        """Return the time after which RSS growth is measured."""
        return self.warmup_s if self.warmup_s is not None else min(60.0, self.duration_s / 3)


# -- /proc and status -----------------------------------------------------------------------
def proc_sample(pid: int) -> Dict[str, float]:
    """Return RSS (MB), open file descriptors and threads of a process, from /proc."""
    fields = {}
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            key, _, value = line.partition(':')
            if key in ('VmRSS', 'Threads'):
                fields[key] = value.split()[0]
    return {'rss_mb': int(fields['VmRSS']) / 1024.0,
            'fds': len(os.listdir(f'/proc/{pid}/fd')),
            'threads': int(fields['Threads'])}


def status_dict(msg) -> Dict:
    """Return a SchedulerStatus as plain numbers."""
    return {'received': int(msg.frames_received), 'on_time': int(msg.frames_on_time),
            'late': int(msg.frames_late), 'dropped': int(msg.frames_dropped),
            'drops_by_reason': dict(zip(msg.drop_reasons, map(int, msg.drop_counts))),
            'queue_length': int(msg.queue_length), 'mean_depth': float(msg.mean_depth),
            'estimated_load': float(msg.estimated_load),
            'stamp_s': msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9}


def full_depth_from_status(history: List[Tuple[float, Dict]]) -> Optional[float]:
    """
    Return the node's full-depth time (s) from its status: estimated_load / arrival rate.

    ``history`` holds (node stamp, status) pairs; the arrival rate is taken over the same
    last 5 s the node uses for ``estimated_load``.
    """
    if len(history) < 2:
        return None
    t1, last = history[-1]
    older = [(t, s) for t, s in history if t1 - t >= 5.0]
    if not older or last['estimated_load'] <= 0:
        return None
    t0, first = older[-1]
    rate = (last['received'] - first['received']) / (t1 - t0)
    return last['estimated_load'] / rate if rate > 0 else None


def profile_full_depth_s(model: str, percentile: int = 50) -> Tuple[float, int]:
    """Return the profile's full-depth time at batch 1 (sum of stage percentiles), stages."""
    from anytime_infer.model.store import PROFILE, read_json, resolve_model_dir
    folder = resolve_model_dir(model)
    prof = read_json(os.path.join(folder, PROFILE), 'the profile')
    return (sum(st['1'][f'p{percentile}_ms'] for st in prof['latency']) / 1000.0,
            len(prof['latency']))


def full_depth_from_diagnostics(values: Dict[str, str], stages: int) -> Optional[float]:
    """Return stages x the node's median measured stage time (s), or None if unknown."""
    try:
        median_ms = float(values['stage_ms_p50'])
    except (KeyError, ValueError):
        return None
    return stages * median_ms / 1000.0 if median_ms > 0 else None


# -- answers on the subscriber side -------------------------------------------------------
class AnswerCounter:
    """
    Answers per frame (camera, header stamp): any frame answered twice is a duplicate.

    Frames are remembered for ``window_s`` of their stamps (an answer comes within its
    deadline or at once when dropped), so memory stays bounded over hours.
    """

    def __init__(self, cameras: int, window_s: float = 60.0) -> None:
        self.window_ns = int(window_s * 1e9)
        self.seen = [set() for _ in range(cameras)]
        self.order = [deque() for _ in range(cameras)]
        self.answers = 0
        self.duplicates = 0
        self.by_outcome = {'on_time': 0, 'late': 0, 'dropped': 0}
        self.late_latency_ms: List[float] = []    # arrival to publication, late answers
        self.lock = threading.Lock()

    def add(self, camera: int, stamp_ns: int, outcome: str, latency_ms: float = 0.0) -> None:
        """Count one DetectionArray for a frame."""
        with self.lock:
            self.answers += 1
            self.by_outcome[outcome] = self.by_outcome.get(outcome, 0) + 1
            if outcome == 'late' and len(self.late_latency_ms) < 1_000_000:
                self.late_latency_ms.append(latency_ms)
            seen, order = self.seen[camera], self.order[camera]
            if stamp_ns in seen:
                self.duplicates += 1
                return
            seen.add(stamp_ns)
            order.append(stamp_ns)
            while order and order[0] < stamp_ns - self.window_ns:
                seen.discard(order.popleft())

    def snapshot(self) -> Dict:
        """Return the counts so far."""
        with self.lock:
            return {'answers': self.answers, 'duplicates': self.duplicates,
                    'answers_by_outcome': dict(self.by_outcome)}


# -- targets, table, plot ------------------------------------------------------------------
def accounting(sample: Dict, queue_bound: int) -> Tuple[int, bool]:
    """Return (in flight, ok): received = on time + late + dropped + in flight <= bound."""
    in_flight = sample['received'] - sample['on_time'] - sample['late'] - sample['dropped']
    return in_flight, 0 <= in_flight <= queue_bound


def evaluate(samples: List[Dict], baseline_s: float, queue_bound: int,
             duplicates: int) -> List[Dict]:
    """
    Check the soak targets on the samples; return one dict per target (name, ok, value).

    Samples after the publisher stopped (``phase`` 'settle') count for accounting only.
    """
    run = [s for s in samples if s['phase'] == 'run']
    base = next((s for s in run if s['t_s'] >= baseline_s), run[0] if run else None)
    after = [s for s in run if base is not None and s['t_s'] >= base['t_s']]
    targets = []
    if after:
        growth = after[-1]['rss_mb'] - base['rss_mb']
        targets.append({'name': 'rss_growth_mb', 'ok': growth <= RSS_GROWTH_MB,
                        'value': round(growth, 2),
                        'bound': f'<= {RSS_GROWTH_MB} MB after t={base["t_s"]:.0f} s '
                                 f'(max {max(s["rss_mb"] for s in after) - base["rss_mb"]:.2f})'})
        for key, tol in (('threads', THREADS_TOLERANCE), ('fds', FDS_TOLERANCE)):
            vals = [s[key] for s in after]
            spread = max(vals) - min(vals)
            targets.append({'name': f'{key}_flat', 'ok': spread <= tol,
                            'value': f'{min(vals)}..{max(vals)}',
                            'bound': f'max - min <= {tol} after t={base["t_s"]:.0f} s'})
    bad = [s['t_s'] for s in samples if not s['accounting_ok']]
    targets.append({'name': 'accounting', 'ok': bool(samples) and not bad,
                    'value': f'{len(samples) - len(bad)}/{len(samples)} samples',
                    'bound': f'received = on_time + late + dropped + in flight, '
                             f'0 <= in flight <= {queue_bound}, at every sample'})
    targets.append({'name': 'no_frame_answered_twice', 'ok': duplicates == 0,
                    'value': duplicates, 'bound': '0 duplicate answers (subscriber side)'})
    # A node that stops answering on time while frames arrive (every frame dropped, e.g.
    # plans stuck on stale stage times) passes the other targets; this one catches it.
    stalled = [b['t_s'] for a, b in zip(run, run[1:])
               if b['received'] > a['received'] and b['on_time'] <= a['on_time']]
    targets.append({'name': 'on_time_keeps_growing', 'ok': not stalled,
                    'value': f'{len(stalled)} stalled intervals'
                             + (f' (from t={stalled[0]:.0f} s)' if stalled else ''),
                    'bound': 'frames on time in every interval with frames received'})
    last = samples[-1] if samples else None
    share = last['late'] / last['received'] if last and last['received'] else 0.0
    targets.append({'name': 'late_share', 'ok': bool(last and last['received']) and
                    share <= LATE_SHARE, 'value': round(share, 5),
                    'bound': f'<= {LATE_SHARE:.0%} of received frames'})
    return targets


def markdown(result: Dict) -> str:
    """Return the soak's table of samples, its summary and its targets as markdown."""
    s, cfg = result['summary'], result['config']
    lines = [f'Soak: {cfg["cameras"]} cameras at {cfg["load"]}x for '
             f'{cfg["duration_s"]:.0f} s, model {cfg["model"]}, {cfg["qos"]} image QoS, '
             f'sampled every {cfg["interval_s"]:.0f} s (code {s.get("revision") or "?"})', '',
             '| t (s) | RSS (MB) | fds | threads | received | on time | late | dropped | '
             'in flight | queue | mean depth | est. load | sent | answers |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for x in result['samples']:
        lines.append(f'| {x["t_s"]:.0f}{"*" if x["phase"] != "run" else ""} | '
                     f'{x["rss_mb"]:.1f} | {x["fds"]} | {x["threads"]} | {x["received"]} | '
                     f'{x["on_time"]} | {x["late"]} | {x["dropped"]} | {x["in_flight"]} | '
                     f'{x["queue_length"]} | {x["mean_depth"]:.2f} | '
                     f'{x["estimated_load"]:.2f} | {x["sent"]} | {x["answers"]} |')
    lines += ['', '(* after the cameras stopped)', '',
              f'- full-depth time {1000 * s["full_depth_s"]:.3f} ms ({s["capacity_source"]}; '
              f'model profile p50: {1000 * s["profile_full_depth_s"]:.3f} ms; the '
              f'node\'s p99 planning time: {_ms(s["planning_full_depth_s"])}) -> capacity '
              f'{s["capacity_hz"]:.0f} frames/s; asked {s["target_rate_hz"]:.0f} frames/s '
              f'({s["target_rate_hz"] / cfg["cameras"]:.0f} Hz per camera)',
              f'- the camera player reached {s["achieved_rate_hz"]:.0f} frames/s '
              f'({100 * s["achieved_fraction"]:.0f} % of the asked rate'
              + ('' if s['achieved_fraction'] >= 0.95 else
                 ': it could not keep up on this machine, so the node saw less than '
                 f'{cfg["load"]}x') + f'); the node received {s["received_rate_hz"]:.0f} '
              f'frames/s; its own estimate of its load (p99 planning times) averaged '
              f'{s["mean_estimated_load"]:.2f}x',
              f'- frames sent {s["sent_total"]} (calibration included), received by the node '
              f'{s["received"]} (lost in transport {s["sent_total"] - s["received"]}, '
              f'skipped by the player when behind {s["skipped_by_player"]}); on time '
              f'{s["on_time"]}, late '
              f'{s["late"]}, dropped {s["dropped"]} {s["drops_by_reason"]}; mean depth '
              f'{s["mean_depth"]:.2f}',
              f'- answers seen by the cameras {s["answers"]} (duplicates {s["duplicates"]}); '
              'late answers, arrival to publication (ms): p50 / p99 / max '
              f'{_ms_or_na(s["late_latency_ms"], "p50")} / '
              f'{_ms_or_na(s["late_latency_ms"], "p99")} / '
              f'{_ms_or_na(s["late_latency_ms"], "max")} (deadline {s["deadline_ms"]:g} ms)',
              f'- node exit code {s["node_exit_code"]}, log lines with ERROR or Traceback: '
              f'{s["log_errors"]}', '', '| target | result | value | bound |',
              '|---|---|---|---|']
    for t in result['targets']:
        lines.append(f'| {t["name"]} | {"PASS" if t["ok"] else "FAIL"} | {t["value"]} | '
                     f'{t["bound"]} |')
    return '\n'.join(lines)


def _ms_or_na(values: Dict, key: str) -> str:
    return 'n/a' if values.get(key) is None else f'{values[key]:.1f}'


def _ms(seconds: Optional[float]) -> str:
    return f'{1000 * seconds:.3f} ms' if seconds else 'n/a'


def plot(result: Dict, path: str) -> None:
    """Plot RSS, descriptors, threads, queue and outcome rates against time (PNG)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    xs = result['samples']
    t = np.array([x['t_s'] for x in xs])
    fig, ax = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    ax[0, 0].plot(t, [x['rss_mb'] for x in xs], 'o-')
    ax[0, 0].set_ylabel('RSS (MB)')
    ax[0, 1].plot(t, [x['fds'] for x in xs], 'o-', label='open fds')
    ax[0, 1].plot(t, [x['threads'] for x in xs], 's-', label='threads')
    ax[0, 1].legend()
    ax[1, 0].plot(t, [x['queue_length'] for x in xs], 'o-', label='queue length')
    ax[1, 0].plot(t, [x['in_flight'] for x in xs], 'x--', label='in flight (counters)')
    ax[1, 0].set_ylabel('frames')
    ax[1, 0].legend()
    dt = np.diff(t)
    dt[dt <= 0] = np.nan
    for key in ('received', 'on_time', 'late', 'dropped', 'sent'):
        ax[1, 1].plot(t[1:], np.diff([x[key] for x in xs]) / dt, '.-', label=key)
    ax[1, 1].set_ylabel('frames/s')
    ax[1, 1].legend(fontsize=8)
    for a in ax[1]:
        a.set_xlabel('time since the soak started (s)')
    cfg = result['config']
    fig.suptitle(f'soak: {cfg["cameras"]} cameras at {cfg["load"]}x, '
                 f'{cfg["duration_s"]:.0f} s')
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- the camera player process ---------------------------------------------------------------
def publisher_main(argv: List[str]) -> int:
    """
    Publish frames on camera topics (a child process of the soak).

    Reads JSON commands on stdin: ``{"rate": Hz per camera, "seconds": s}`` plays at a
    rate, ``{"stop": true}`` ends. Prints one JSON line per second: sent per camera,
    frames skipped because the loop fell behind, and time.
    """
    from anytime_infer.ros_env import apply_ros_env_defaults
    apply_ros_env_defaults()
    import rclpy
    from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from anytime_infer.demo import frame_message, load_samples

    opts = json.loads(argv[0])
    topics, reliable = opts['topics'], opts['qos'] == 'reliable'
    rclpy.init()
    node = rclpy.create_node('anytime_infer_soak_cameras')
    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE) if reliable \
        else qos_profile_sensor_data
    pubs = [node.create_publisher(Image, t, qos) for t in topics]
    images = load_samples(opts['model'])['images'][:64]
    msgs = [[frame_message(img, 0, f'camera_{c}') for img in images]
            for c in range(len(topics))]
    sent = [0] * len(topics)
    state = {'rate': 0.0, 'until': 0.0, 'stop': False, 'changed': True}
    lock = threading.Lock()

    def read_commands() -> None:
        for line in sys.stdin:
            cmd = json.loads(line)
            with lock:
                if cmd.get('stop'):
                    state['stop'] = True
                    return
                state.update(rate=float(cmd['rate']), until=time.monotonic() + cmd['seconds'],
                             changed=True)
        with lock:
            state['stop'] = True
    threading.Thread(target=read_commands, daemon=True).start()
    while not all(p.get_subscription_count() for p in pubs):
        time.sleep(0.05)
    print(json.dumps({'ready': True}), flush=True)
    last_stamp, skipped = 0, 0
    next_report = time.monotonic() + 1.0
    start, done, rate = time.monotonic(), 0, 0.0
    try:
        while True:
            now = time.monotonic()
            with lock:
                if state['stop']:
                    break
                if state['changed']:
                    start, done, rate = now, 0, state['rate']
                    state['changed'] = False
                playing = rate > 0 and now < state['until']
            if now >= next_report:
                print(json.dumps({'t': now, 'sent': sent, 'skipped': skipped}), flush=True)
                next_report += 1.0
            if not playing:
                time.sleep(0.01)
                continue
            due = int((now - start) * rate)   # rounds of one frame per camera
            if due - done > max(1, int(0.25 * rate)):   # fell behind: do not burst
                skipped += (due - done) * len(topics)
                done = due
            if done >= due:
                time.sleep(min(0.002, (done + 1) / rate - (now - start)))
                continue
            for c, pub in enumerate(pubs):
                stamp = max(time.time_ns(), last_stamp + 1)   # unique per frame
                last_stamp = stamp
                msg = msgs[c][(done + c) % len(images)]
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
                pub.publish(msg)
                sent[c] += 1
            done += 1
    finally:
        print(json.dumps({'t': time.monotonic(), 'sent': sent, 'skipped': skipped,
                          'final': True}), flush=True)
        node.destroy_node()
        rclpy.shutdown()
    return 0


class Player:
    """The camera player child process, driven over its stdin, read from its stdout."""

    def __init__(self, topics: List[str], model: str, qos: str) -> None:
        opts = json.dumps({'topics': topics, 'model': model, 'qos': qos})
        self.proc = subprocess.Popen([sys.executable, '-m', 'anytime_infer.soak', opts],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = threading.Event()
        self.latest = {'sent': [0] * len(topics), 'skipped': 0}
        self.final = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get('ready'):
                self.ready.set()
            elif 'sent' in msg:
                self.latest = msg
                if msg.get('final'):
                    self.final.set()

    def command(self, **cmd) -> None:
        """Send one command line."""
        self.proc.stdin.write(json.dumps(cmd) + '\n')
        self.proc.stdin.flush()

    def sent(self) -> int:
        """Return frames sent so far, all cameras (as of the last report, <= 1 s old)."""
        return int(sum(self.latest['sent']))

    def close(self) -> None:
        """Stop the player and wait for its last report."""
        if self.proc.poll() is None:
            try:
                self.command(stop=True)
            except (BrokenPipeError, OSError):
                pass
            self.final.wait(10.0)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the soak ---------------------------------------------------------------------------------
def node_params(cfg: SoakConfig, topics: List[str]) -> List[str]:
    """Return the node's command-line parameters for the soak's cameras."""
    names = ', '.join(f"'{t}'" for t in topics)
    return ['-p', f'model:={cfg.model}', '-p', f'camera_topics:=[{names}]',
            '-p', f'qos_reliability:={cfg.qos}', *cfg.extra_params]


def _wait(cond, timeout: float, what: str, proc=None) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f'{what}: the node exited with {proc.returncode}')
        if time.monotonic() > end:
            raise RuntimeError(f'timed out waiting for {what}')
        time.sleep(0.1)


def run_soak(cfg: SoakConfig, log=print) -> Dict:
    """Run the soak; write soak.json, soak.md and soak.png into ``cfg.out``; return it."""
    from anytime_infer.ros_env import apply_ros_env_defaults
    apply_ros_env_defaults()
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from anytime_infer.demo import node_command
    from anytime_infer.msg import DetectionArray, SchedulerStatus
    from diagnostic_msgs.msg import DiagnosticArray

    os.makedirs(cfg.out, exist_ok=True)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    params = cfg.params or os.path.join(repo, 'config', 'anytime_infer.yaml')
    topics = [f'/soak/camera_{i}/image_raw' for i in range(cfg.cameras)]
    log_path = os.path.join(cfg.out, 'node.log')
    revision = _revision(repo)
    cmd = node_command(params, node_params(cfg, topics))
    log(f'soak: starting the node: {" ".join(cmd)}')
    with open(log_path, 'w') as node_log:
        node = subprocess.Popen(cmd, stdout=node_log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    rclpy.init()
    ros = rclpy.create_node('anytime_infer_soak')
    executor = SingleThreadedExecutor()
    executor.add_node(ros)
    counter = AnswerCounter(cfg.cameras)
    history: deque = deque(maxlen=30)    # (node stamp, status)
    outcome_name = {DetectionArray.ON_TIME: 'on_time', DetectionArray.LATE: 'late',
                    DetectionArray.DROPPED: 'dropped'}

    def on_status(m) -> None:
        st = status_dict(m)
        history.append((st['stamp_s'], st))
    ros.create_subscription(SchedulerStatus, STATUS_TOPIC, on_status, 10)
    diag: Dict[str, str] = {}
    exec_diag: Dict[str, str] = {}     # the executor's health (late causes, wake-ups)

    def on_diagnostics(m) -> None:
        for st in m.status:
            kv = {v.key: v.value for v in st.values}
            if 'stage_ms_p50' in kv:
                diag.clear()
                diag.update(kv)
            if 'late_causes' in kv:
                exec_diag.clear()
                exec_diag.update(kv)
    ros.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
    deep = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    for i in range(cfg.cameras):
        ros.create_subscription(
            DetectionArray, f'/soak/camera_{i}/detections',
            lambda m, i=i: counter.add(
                i, m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec,
                outcome_name.get(m.outcome, 'unknown'),
                m.latency.sec * 1e3 + m.latency.nanosec * 1e-6), deep)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    player = None
    samples: List[Dict] = []
    try:
        _wait(lambda: history, 180.0, 'the node status', node)
        player = Player(topics, cfg.model, cfg.qos)
        _wait(player.ready.is_set, 60.0, 'the node to subscribe to the cameras', node)
        # Calibration: light load (full depth) until the node has measured its stages.
        player.command(rate=cfg.calibration_hz, seconds=cfg.calibration_s + 30)
        t_cal = time.monotonic()
        profile_s, stages = profile_full_depth_s(cfg.model)
        full_s = planning_s = None
        while time.monotonic() - t_cal < cfg.calibration_s or full_s is None:
            if time.monotonic() - t_cal > cfg.calibration_s + 20:
                break
            time.sleep(0.5)
            full_s = full_depth_from_diagnostics(dict(diag), stages)
            planning_s = full_depth_from_status(list(history))
        source = (f'node-measured: {stages} stages x median stage time '
                  f'{1000 * full_s / stages:.3f} ms' if full_s else '')
        if full_s is None:
            full_s, source = profile_s, 'model profile p50 (the node reported no stage times)'
        rate_total = cfg.load / full_s
        log(f'soak: full-depth time {1000 * full_s:.3f} ms ({source}) -> {cfg.load}x = '
            f'{rate_total:.0f} frames/s ({rate_total / cfg.cameras:.0f} Hz per camera) for '
            f'{cfg.duration_s:.0f} s')
        queue_bound = _param(params, cfg.extra_params, 'max_queue', 64)
        cal_sent = player.sent()
        player.command(rate=rate_total / cfg.cameras, seconds=cfg.duration_s)
        t0 = time.monotonic()

        def sample(phase: str) -> Dict:
            st = dict(history[-1][1]) if history else {}
            x = {'t_s': round(time.monotonic() - t0, 2), 'phase': phase,
                 **proc_sample(node.pid), **st, 'sent': player.sent() - cal_sent,
                 **counter.snapshot()}
            x['in_flight'], x['accounting_ok'] = accounting(x, queue_bound)
            samples.append(x)
            log(f'  t={x["t_s"]:6.0f} s  RSS {x["rss_mb"]:7.1f} MB  fds {x["fds"]:3d}  '
                f'threads {x["threads"]:3d}  received {x["received"]:8d}  on time '
                f'{x["on_time"]:8d}  late {x["late"]:5d}  dropped {x["dropped"]:8d}  '
                f'queue {x["queue_length"]:3d}  load {x["estimated_load"]:.2f}  '
                f'sent {x["sent"]:8d}')
            return x
        sample('run')
        k, died = 1, None
        while True:
            due = t0 + k * cfg.interval_s
            if due > t0 + cfg.duration_s + 1e-6:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            if node.poll() is not None:   # keep what was sampled: the report says so
                died = f'exited with {node.returncode} at t={time.monotonic() - t0:.0f} s'
                log(f'soak: the node {died}')
                break
            sample('run')
            k += 1
        if died is None:
            time.sleep(max(0.0, t0 + cfg.duration_s - time.monotonic()))
            player.close()
            time.sleep(cfg.settle_s)
            sample('settle')
    finally:
        if player is not None:
            player.close()
        exit_code = _stop(node)
        executor.shutdown()
        ros.destroy_node()
        rclpy.shutdown()
    capacity = {'revision': revision, 'full_depth_s': full_s,
                'deadline_ms': _param(params, cfg.extra_params, 'deadline_ms', 100.0, float),
                'capacity_source': source,
                'profile_full_depth_s': profile_s, 'planning_full_depth_s': planning_s}
    result = _result(cfg, samples, counter, queue_bound, capacity, rate_total, player,
                     cal_sent, exit_code, log_path)
    result['executor_diagnostics'] = dict(exec_diag)
    shown = ('late_causes', 'deadline_guard_ms', 'late_stage_start_ms_p50',
             'wake_late_ms_p99', 'overhead_ms_p50')
    log('soak: executor at the end: ' + ', '.join(
        f'{k} {exec_diag.get(k, "?")}' for k in shown))
    result['targets'].insert(0, {'name': 'node_alive', 'ok': died is None,
                                 'value': died or 'ran to the end', 'bound': 'no exit'})
    result['passed'] = all(t['ok'] for t in result['targets'])
    with open(os.path.join(cfg.out, 'soak.json'), 'w') as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(cfg.out, 'soak.md'), 'w') as f:
        f.write(markdown(result) + '\n')
    plot(result, os.path.join(cfg.out, 'soak.png'))
    return result


def _param(params: str, extra: List[str], name: str, default, kind=int):
    """Return a number parameter as the node gets it: the file, then -p overrides."""
    import yaml
    value = default
    with open(params) as f:
        for node in (yaml.safe_load(f) or {}).values():
            value = kind(node.get('ros__parameters', {}).get(name, value))
    for item in extra:
        if item.startswith(name + ':='):
            value = kind(item.split(':=', 1)[1])
    return value


def _revision(repo: str) -> str:
    """Return the repository's commit (with ``+dirty`` for local changes), or ''."""
    try:
        head = subprocess.run(['git', '-C', repo, 'rev-parse', '--short', 'HEAD'],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(['git', '-C', repo, 'status', '--porcelain', '-uno'],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ''
    return head + ('+dirty' if head and dirty else '')


def _stop(node: subprocess.Popen) -> Optional[int]:
    """Stop the node with SIGINT to its process group; return its exit code."""
    if node.poll() is None:
        os.killpg(node.pid, signal.SIGINT)
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
    return node.returncode


def _percentiles(values: List[float]) -> Dict[str, Optional[float]]:
    """Return p50, p99 and max of some values (None when there are none)."""
    if not values:
        return {'p50': None, 'p99': None, 'max': None}
    p50, p99 = np.percentile(values, [50, 99])
    return {'p50': round(float(p50), 2), 'p99': round(float(p99), 2),
            'max': round(float(max(values)), 2)}


def _result(cfg, samples, counter, queue_bound, capacity, rate_total, player, cal_sent,
            exit_code, log_path) -> Dict:
    run = [s for s in samples if s['phase'] == 'run']
    last = samples[-1]
    span = run[-1]['t_s'] - run[0]['t_s'] if len(run) > 1 else 0.0
    sent_run = player.sent() - cal_sent
    achieved = (run[-1]['sent'] - run[0]['sent']) / span if span else 0.0
    received_rate = (run[-1]['received'] - run[0]['received']) / span if span else 0.0
    with open(log_path, errors='replace') as f:
        log_errors = sum(1 for line in f if 'ERROR' in line or 'Traceback' in line)
    snap = counter.snapshot()
    summary = {
        **capacity, 'capacity_hz': 1.0 / capacity['full_depth_s'],
        'target_rate_hz': rate_total,
        'achieved_rate_hz': achieved, 'achieved_fraction': achieved / rate_total,
        'received_rate_hz': received_rate,
        'mean_estimated_load': float(np.mean([s['estimated_load'] for s in run[1:]] or [0])),
        'sent': sent_run, 'sent_total': player.sent(), 'received': last['received'],
        'on_time': last['on_time'],
        'late': last['late'], 'dropped': last['dropped'],
        'drops_by_reason': last['drops_by_reason'], 'mean_depth': last['mean_depth'],
        'answers': snap['answers'], 'duplicates': snap['duplicates'],
        'late_latency_ms': _percentiles(counter.late_latency_ms),
        'skipped_by_player': int(player.latest.get('skipped', 0)),
        'node_exit_code': exit_code, 'log_errors': log_errors, 'queue_bound': queue_bound,
    }
    targets = evaluate(samples, cfg.baseline_s(), queue_bound, snap['duplicates'])
    return {'config': asdict(cfg), 'summary': summary, 'samples': samples,
            'targets': targets, 'passed': all(t['ok'] for t in targets)}


def main(cfg: SoakConfig) -> int:
    """Run the soak, print the table and PASS/FAIL per target; 0 when all pass."""
    result = run_soak(cfg)
    print(markdown(result))
    print(f'wrote {cfg.out}/soak.json, soak.md, soak.png, node.log')
    return 0 if result['passed'] else 1


if __name__ == '__main__':
    sys.exit(publisher_main(sys.argv[1:]))
