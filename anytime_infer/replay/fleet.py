"""
A fleet's recorded drives evaluated in one command, one Ray task per bag.

``evaluate`` finds every bag under the given paths, gives each a sub-folder of ``out``
(named after its path) and replays it there as ``anytime-infer replay`` does
(deterministic by default), then writes the fleet summary (``fleet_report``). Bags run as
Ray tasks: a local Ray with the machine's cores by default, an existing cluster with
``address``, or a plain in-process loop with ``workers=0`` (the reference: per-bag
outputs and summary are byte-identical either way, since every task runs the same code
with the same torch thread count).

Faults stay with their bag: an unreadable bag, an exception, or a worker that dies (Ray
retries the task once, then the bag is reported failed) end up in the summary with their
error. A bag is written to ``out/.<name>.tmp-<pid>`` and renamed to ``out/<name>`` when
complete, with ``job.json`` (the settings it was evaluated with, its status), so a
restarted run skips bags already done with the same settings (``force`` redoes them).

Test hook (documented in the README): with ``ANYTIME_INFER_FLEET_KILL=<text>`` in the
environment, a Ray task whose bag name contains ``<text>`` kills its own worker process
(SIGKILL) before evaluating, after appending a line to the file named by
``ANYTIME_INFER_FLEET_KILL_LOG`` when set; it exercises the retry and failure path.
"""
from dataclasses import asdict, dataclass, field
import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from anytime_infer.replay.bags import find_bags

JOB_FILE = 'job.json'
KILL_ENV, KILL_LOG_ENV = 'ANYTIME_INFER_FLEET_KILL', 'ANYTIME_INFER_FLEET_KILL_LOG'
OBJECT_STORE_BYTES = 80 * 1024 * 1024   # results are small dicts; Ray's minimum is ~75 MiB


@dataclass
class FleetConfig:
    """How every bag is evaluated (a bag done with other settings is redone)."""

    model: str = 'fashion_mnist'
    policies: List[str] = field(default_factory=lambda: ['imprecise_dp'])
    compare: bool = False          # one sub-folder per policy (as replay --compare)
    deadline_ms: float = 100.0
    seed: int = 0
    rate: float = 1.0
    deterministic: bool = True
    topics: Optional[List[str]] = None
    threads: int = 1               # torch threads per bag task

    def key(self) -> Dict:
        """Return the settings that decide a bag's outputs (threads do not: same bytes)."""
        d = asdict(self)
        d.pop('threads')
        return d


@dataclass
class BagJob:
    """One bag and the sub-folder of the output folder it is written to."""

    bag: str
    name: str


@dataclass
class RunInfo:
    """How a run went (``run.json``; not part of the summary, which must not vary)."""

    engine: str = 'sequential'
    address: Optional[str] = None
    workers: int = 0
    threads: int = 1
    cluster_cpus: float = 0.0
    engine_start_s: float = 0.0
    wall_s: float = 0.0
    bags: int = 0
    evaluated: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)
    frames: int = 0
    per_bag: Dict[str, Dict] = field(default_factory=dict)   # seconds, node, pid


def bag_jobs(paths: Sequence[str], out: str) -> List[BagJob]:
    """Every bag under ``paths`` (not under ``out``) with a unique, stable folder name."""
    found = find_bags(paths, exclude=[out])
    names = ['__'.join(rel.split(os.sep)) or 'bag' for _, rel in found]
    jobs = []
    for (bag, _), name in zip(found, names):
        if names.count(name) > 1:   # same relative path under two arguments
            name += '-' + hashlib.sha1(os.path.abspath(bag).encode()).hexdigest()[:8]
        jobs.append(BagJob(bag, name))
    return jobs


def is_done(out: str, job: BagJob, cfg: FleetConfig) -> bool:
    """Return whether the bag's folder is complete, successful and made with ``cfg``."""
    try:
        with open(os.path.join(out, job.name, JOB_FILE)) as f:
            done = json.load(f)
    except (OSError, ValueError):
        return False
    return done.get('status') == 0 and done.get('config') == cfg.key() and \
        done.get('bag') == os.path.abspath(job.bag) and 'totals' in done


def evaluate_bag(job: BagJob, out: str, cfg: FleetConfig,
                 progress: Optional[Callable[[int], None]] = None) -> Dict:
    """
    Replay one bag into ``out/<name>`` (through a temporary folder); return its result.

    Never raises for a bad bag or a failing evaluation: the error is in the result and in
    ``out/<name>/job.json``.
    """
    import cv2
    import torch

    from anytime_infer.replay.command import replay
    from anytime_infer.replay.fleet_report import bag_totals
    from anytime_infer.replay.reports import write_error_report
    # N tasks on N x threads cores: each keeps to its share (torch and OpenCV pools).
    torch.set_num_threads(cfg.threads)
    cv2.setNumThreads(cfg.threads)
    final = os.path.join(out, job.name)
    _remove_temporaries(out, job.name)     # a killed earlier attempt's leftovers
    tmp = os.path.join(out, f'.{job.name}.tmp-{os.getpid()}')
    t0 = time.monotonic()
    seen = [0]

    def on_progress(k: int, n: Optional[int]) -> None:
        if progress and k > seen[0]:
            progress(k - seen[0])
            seen[0] = k
    try:
        status, reps = replay(job.bag, tmp, cfg.model, cfg.policies[0],
                              cfg.policies if cfg.compare else None, cfg.topics, cfg.rate,
                              cfg.deterministic, cfg.deadline_ms, cfg.seed, on_progress,
                              quiet=True)
        errors = [e for r in reps for e in r.get('errors', [])]
        frames = max((r['total']['frames_in'] for r in reps if 'total' in r), default=0)
    except Exception as e:  # noqa: B902 - whatever fails, it fails this bag alone
        shutil.rmtree(tmp, ignore_errors=True)
        mode = 'deterministic' if cfg.deterministic else 'dds'
        write_error_report(tmp, job.bag, mode, cfg.policies[0],
                           f'{job.bag}: evaluation failed: {type(e).__name__}: {e}')
        status, errors, frames = 1, [f'{type(e).__name__}: {e}'], 0
    result = {'name': job.name, 'bag': os.path.abspath(job.bag), 'status': status,
              'errors': errors, 'frames': frames}
    if status == 0:   # the fleet totals' share of this bag, counted here, not by the driver
        result['totals'] = bag_totals(tmp, cfg.policies, cfg.compare)
    with open(os.path.join(tmp, JOB_FILE), 'w') as f:
        json.dump({**result, 'config': cfg.key()}, f, indent=1, sort_keys=True)
        f.write('\n')
    if os.path.exists(final):
        shutil.rmtree(final)
    os.rename(tmp, final)   # complete: only now does out/<name> exist
    # Where and how long: for run.json only (job.json and the summary must not vary).
    result['seconds'] = round(time.monotonic() - t0, 3)
    result['pid'] = os.getpid()
    result['node'] = _node_id()
    return result


def _node_id() -> str:
    if 'ray' not in sys.modules:   # in-process run: no need to import Ray
        return 'local'
    try:
        import ray
        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()[:12]
    except Exception:  # noqa: B902 - where a bag ran is only informative
        pass
    return 'local'


def _remove_temporaries(out: str, name: str) -> None:
    prefix = f'.{name}.tmp-'
    for entry in os.listdir(out):
        if entry.startswith(prefix):
            shutil.rmtree(os.path.join(out, entry), ignore_errors=True)


def crashed_result(job: BagJob, error: str) -> Dict:
    """Return the result of a bag whose task never returned (its worker died twice)."""
    return {'name': job.name, 'bag': os.path.abspath(job.bag), 'status': 1,
            'errors': [error], 'frames': 0}


# -- engines ------------------------------------------------------------------------------
def run_sequential(jobs: List[BagJob], out: str, cfg: FleetConfig,
                   on_frames: Callable[[int], None],
                   on_bag: Callable[[Dict], None]) -> List[Dict]:
    """Evaluate the bags one after the other in this process (the reference)."""
    import cv2
    import torch
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    results = []
    try:
        for job in jobs:
            results.append(evaluate_bag(job, out, cfg, on_frames))
            on_bag(results[-1])
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    return results


def _ray_task(job: BagJob, out: str, cfg: FleetConfig, counter) -> Dict:
    """Evaluate one bag in a Ray worker process (the body of a task)."""
    kill = os.environ.get(KILL_ENV)
    if kill and kill in job.name:
        log = os.environ.get(KILL_LOG_ENV)
        if log:
            with open(log, 'a') as f:
                f.write(f'{job.name} {os.getpid()}\n')
        os.kill(os.getpid(), signal.SIGKILL)

    def progress(n: int) -> None:
        counter.add.remote(n)
    return evaluate_bag(job, out, cfg, progress if counter is not None else None)


class _Counter:
    """A Ray actor the tasks report evaluated frames to (for the progress bar)."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, n: int) -> None:
        self.n += n

    def take(self) -> int:
        n, self.n = self.n, 0
        return n


def start_ray(address: Optional[str], workers: int, threads: int) -> float:
    """Start a local Ray (``workers`` x ``threads`` CPUs) or join ``address``; return CPUs."""
    import logging

    import ray
    common = {'include_dashboard': False, 'log_to_driver': False,
              'logging_level': logging.WARNING}
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError) as e:
            raise RuntimeError(
                f'could not join the Ray cluster at {address}: {e}. A cluster started with '
                '`ray start --head` uses token authentication: set RAY_AUTH_MODE=token and '
                "make the cluster's token readable here (~/.ray/auth_token, "
                'RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)') from None
    else:
        # 'local': always a new instance of our own, even when a cluster runs here.
        ray.init(address='local', num_cpus=workers * threads,
                 object_store_memory=OBJECT_STORE_BYTES, **common)
    return float(ray.cluster_resources().get('CPU', 0.0))


def run_ray(jobs: List[BagJob], out: str, cfg: FleetConfig, on_frames: Callable[[int], None],
            on_bag: Callable[[Dict], None], progress: bool = True) -> List[Dict]:
    """Evaluate every bag as one Ray task (``ray`` already initialised); keep job order."""
    import ray
    from ray.exceptions import RayError
    counter = ray.remote(num_cpus=0)(_Counter).remote() if progress else None
    task = ray.remote(num_cpus=cfg.threads, max_retries=1, retry_exceptions=False)(_ray_task)
    pending = {task.remote(job, os.path.abspath(out), cfg, counter): i
               for i, job in enumerate(jobs)}
    results: List[Optional[Dict]] = [None] * len(jobs)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
        if counter is not None:
            on_frames(ray.get(counter.take.remote()))
        for ref in done:
            i = pending.pop(ref)
            try:
                results[i] = ray.get(ref)
            except RayError as e:   # the worker died on both tries (or Ray failed it)
                first = str(e).strip().splitlines()[0] if str(e).strip() else ''
                results[i] = crashed_result(jobs[i], f'{type(e).__name__} (retried once): '
                                            f'{first}')
            on_bag(results[i])
    if counter is not None:
        on_frames(ray.get(counter.take.remote()))
    return results


# -- the command --------------------------------------------------------------------------
def _exit_on_sigterm():
    """Turn SIGTERM into SystemExit (so that finally blocks run); return the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def leave(signum, frame):
        raise SystemExit(128 + signum)
    return signal.signal(signal.SIGTERM, leave)


def evaluate(paths: Sequence[str], out: str, cfg: FleetConfig, workers: Optional[int] = None,
             address: Optional[str] = None, force: bool = False,
             progress: bool = True) -> Tuple[int, Dict, RunInfo]:
    """
    Evaluate every bag under ``paths`` into ``out``; write the summary.

    ``workers``: None = one per core (``threads`` each) on a local Ray, 0 = in-process.
    Returns (exit status: 0 all bags complete, 3 some failed, 2 no bag found; summary;
    run info).
    """
    from anytime_infer.replay.fleet_report import build_summary, write_summary
    from tqdm import tqdm
    from anytime_infer.scheduler.policies import POLICY_NAMES
    unknown = [p for p in cfg.policies if p not in POLICY_NAMES or p == 'fixed_depth']
    if unknown:   # found now, not once per bag
        raise ValueError(f'policy {", ".join(unknown)}: one of '
                         f'{", ".join(n for n in POLICY_NAMES if n != "fixed_depth")}')
    os.makedirs(out, exist_ok=True)
    jobs = bag_jobs(paths, out)
    if not jobs:
        raise FileNotFoundError('no bags found under ' + ', '.join(paths))
    if not cfg.deterministic and (workers != 0 or address):
        # Over DDS every bag runs a node on the same topics: one at a time per machine.
        raise ValueError('replay over DDS (--dds) evaluates bags one at a time: add '
                         '--sequential')
    info = RunInfo(bags=len(jobs), threads=cfg.threads)
    todo = [j for j in jobs if force or not is_done(out, j, cfg)]
    info.skipped = [j.name for j in jobs if j not in todo]
    start = time.monotonic()
    bags_bar = tqdm(total=len(jobs), desc='bags', unit='bag', position=0,
                    disable=not progress, initial=len(info.skipped))
    frames_bar = tqdm(desc='frames', unit='frame', position=1, disable=not progress)

    def on_bag(r: Dict) -> None:
        bags_bar.update(1)
        if r['status'] != 0:
            bags_bar.write(f'{r["name"]}: failed: ' + '; '.join(r['errors']))
    results: List[Dict] = []
    try:
        if todo and (workers == 0 and not address):
            results = run_sequential(todo, out, cfg, frames_bar.update, on_bag)
        elif todo:
            import ray
            info.engine, info.address = 'ray', address
            info.workers = workers or max(1, (os.cpu_count() or 1) // cfg.threads)
            t0 = time.monotonic()
            old_term = None
            try:
                info.cluster_cpus = start_ray(address, info.workers, cfg.threads)
                info.engine_start_s = round(time.monotonic() - t0, 3)
                # SIGTERM must end in ray.shutdown() too (set after ray.init, which has a
                # handler of its own): Ray's agent processes outlive a driver that dies
                # without it, as they do after SIGKILL, which cannot be caught.
                old_term = _exit_on_sigterm()
                results = run_ray(todo, out, cfg, frames_bar.update, on_bag, progress)
            finally:
                ray.shutdown()
                if old_term is not None:
                    signal.signal(signal.SIGTERM, old_term)
    finally:
        bags_bar.close()
        frames_bar.close()
    info.wall_s = round(time.monotonic() - start, 3)
    info.evaluated = [r['name'] for r in results]
    info.frames = sum(r['frames'] for r in results)
    info.per_bag = {r['name']: {k: r[k] for k in ('seconds', 'node', 'pid') if k in r}
                    for r in results}
    summary = build_summary(out, jobs, {r['name']: r for r in results}, cfg)
    info.failed = [b['name'] for b in summary['bags'] if not b['ok']]
    write_summary(out, summary, asdict(info))
    status = 3 if info.failed else 0
    return status, summary, info
