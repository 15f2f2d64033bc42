"""
Scale figures of ``evaluate``: bags per minute per worker count, engine start-up, memory.

``python -m anytime_infer.replay.fleet_bench --out DIR`` makes one bag (``make-bag``:
2 cameras, 30 Hz, ``--seconds`` of drive), copies it ``--bags`` times, evaluates the
folder in-process (sequential) and on a local Ray with each ``--workers`` count (fresh
output each time), samples the resident memory of Ray's worker processes and daemons,
and prints a markdown table plus the figures behind it (``DIR/fleet_bench.json``).
"""
import argparse
import json
import os
import shutil
import threading
import time
from typing import Dict, List


def _rss_kib(pid: str) -> int:
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler(threading.Thread):
    """Peak resident memory of Ray worker processes and of Ray's daemons and agents, by PID."""

    def __init__(self, period_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.period_s = period_s
        self.workers: Dict[str, int] = {}
        self.daemons: Dict[str, int] = {}
        self._done = threading.Event()

    def run(self) -> None:
        """Sample until stopped."""
        while not self._done.is_set():
            for pid in filter(str.isdigit, os.listdir('/proc')):
                try:
                    with open(f'/proc/{pid}/cmdline', 'rb') as f:
                        cmd = f.read()
                except OSError:
                    continue
                if cmd.startswith(b'ray::') and b'Agent' not in cmd:
                    into = self.workers      # ray::IDLE, ray::_ray_task, ray::_Counter
                elif b'gcs_server' in cmd or b'/raylet' in cmd or b'ray/_private' in cmd or \
                        b'ray/dashboard' in cmd or b'ray/autoscaler' in cmd or \
                        cmd.startswith(b'ray::'):
                    into = self.daemons
                else:
                    continue
                into[pid] = max(into.get(pid, 0), _rss_kib(pid))
            self._done.wait(self.period_s)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._done.set()
        self.join()


def bench(out: str, bags: int = 8, seconds: float = 30.0, workers: List[int] = (1, 2),
          model: str = 'fashion_mnist') -> Dict:
    """Make the fleet, evaluate it per engine setting, return the figures."""
    from anytime_infer.replay.fleet import evaluate, FleetConfig
    from anytime_infer.replay.making import make_bag
    fleet = os.path.join(out, 'fleet')
    if not os.path.isdir(fleet):
        first = os.path.join(fleet, 'drive00')
        os.makedirs(fleet)
        make_bag(first, model, cameras=2, rate=30.0, frames=int(30 * seconds), seed=0)
        for i in range(1, bags):
            shutil.copytree(first, os.path.join(fleet, f'drive{i:02d}'))
    frames_per_bag = 2 * int(30 * seconds)
    rows = []
    for w in [0] + list(workers):
        dest = os.path.join(out, f'eval_w{w}')
        shutil.rmtree(dest, ignore_errors=True)
        sampler = MemorySampler()
        sampler.start()
        t0 = time.monotonic()
        status, summary, info = evaluate([fleet], dest, FleetConfig(model=model), workers=w,
                                         progress=False)
        wall = time.monotonic() - t0
        sampler.stop()
        work = wall - info.engine_start_s
        rows.append({
            'engine': info.engine, 'workers': w, 'bags': info.bags, 'status': status,
            'frames_per_bag': frames_per_bag, 'wall_s': round(wall, 2),
            'engine_start_s': info.engine_start_s,
            'bags_per_min': round(info.bags / wall * 60.0, 2),
            'bags_per_min_after_start': round(info.bags / work * 60.0, 2),
            'frames_per_s': round(info.bags * frames_per_bag / wall, 1),
            'worker_peak_rss_mib': sorted(round(v / 1024) for v in sampler.workers.values()),
            'daemons_peak_rss_mib': round(sum(sampler.daemons.values()) / 1024),
            'load_avg_1min': round(os.getloadavg()[0], 2)})
    return {'cpus': os.cpu_count(), 'seconds_per_bag': seconds, 'rows': rows}


def table(res: Dict) -> str:
    """Markdown table of the figures."""
    lines = [f'{res["rows"][0]["bags"]} bags of {res["seconds_per_bag"]:g} s (2 cameras x '
             f'30 Hz, {res["rows"][0]["frames_per_bag"]} frames each), {res["cpus"]} cores',
             '', '| engine | workers | wall s | engine start s | bags/min | bags/min after '
             'start | frames/s | worker peak RSS MiB | Ray daemons RSS MiB | load avg |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for r in res['rows']:
        lines.append(f'| {r["engine"]} | {r["workers"]} | {r["wall_s"]} | '
                     f'{r["engine_start_s"]} | {r["bags_per_min"]} | '
                     f'{r["bags_per_min_after_start"]} | {r["frames_per_s"]} | '
                     f'{", ".join(map(str, r["worker_peak_rss_mib"])) or "-"} | '
                     f'{r["daemons_peak_rss_mib"] or "-"} | {r["load_avg_1min"]} |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    """Run the benchmark from the command line."""
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--out', required=True, help='working folder (bags and outputs)')
    p.add_argument('--bags', type=int, default=8)
    p.add_argument('--seconds', type=float, default=30.0, help='drive length of each bag')
    p.add_argument('--workers', default='1,2', help='local Ray worker counts')
    p.add_argument('--model', default='fashion_mnist')
    args = p.parse_args(argv)
    res = bench(args.out, args.bags, args.seconds,
                [int(w) for w in args.workers.split(',')], args.model)
    with open(os.path.join(args.out, 'fleet_bench.json'), 'w') as f:
        json.dump(res, f, indent=1)
    print(table(res))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
