"""The executor with a real bundled model on the CPU: outcomes, errors, queue, shutdown."""
import os
import threading
import time

from anytime_infer.demo import load_samples
from anytime_infer.executor import Executor, FrameJob
from anytime_infer.model.store import load_model, PROFILE, read_json, resolve_model_dir
from anytime_infer.scheduler.profiles import profile_from_dict
import numpy as np
import pytest


def make_executor(outcomes, **kw):
    folder = resolve_model_dir('traffic_lights')
    net, card = load_model(folder)
    raw = read_json(os.path.join(folder, PROFILE), 'profile')
    lock = threading.Lock()

    def on_outcome(o):
        with lock:
            outcomes.append(o)
    return Executor(net, card, profile_from_dict(raw), raw['temperature'], on_outcome,
                    device='cpu', **kw)


def wait_for(pred, timeout=20.0):
    end = time.monotonic() + timeout
    while not pred() and time.monotonic() < end:
        time.sleep(0.01)
    return pred()


def test_every_job_ends_in_one_outcome_with_results():
    outcomes = []
    ex = make_executor(outcomes)
    ex.start()
    samples = load_samples('traffic_lights')
    n = 20
    for i in range(n):
        now = time.monotonic()
        ex.submit(FrameJob(i % 2, now, now + 3.0, samples['images'][i:i + 1], meta=i))
    assert wait_for(lambda: len(outcomes) == n)
    ex.stop()
    assert sorted(o.job.meta for o in outcomes) == list(range(n))
    assert all(o.outcome == 'on_time' for o in outcomes)
    correct = sum(o.results[0].class_id == samples['labels'][o.job.meta] for o in outcomes)
    assert correct >= 0.9 * n
    # Light load: full depth (a few less when other work starves this process).
    assert sum(o.results[0].depth == 4 for o in outcomes) >= 0.8 * n


def test_a_failing_stage_ends_its_task_at_the_exit_before_and_the_worker_goes_on():
    import torch

    outcomes = []
    ex = make_executor(outcomes)
    real_stage = ex.net.stages[1]

    class FailsOnNegative(torch.nn.Module):
        """Fault injection: stage 2 raises for one marked input (a broken kernel)."""

        def forward(self, x):
            if (x < -1e3).any():
                raise RuntimeError('injected stage failure')
            return real_stage(x)
    ex.net.stages[1] = FailsOnNegative()
    ex.start()
    samples = load_samples('traffic_lights')
    now = time.monotonic()
    bad_shape = np.zeros((1, 64, 32, 4), np.uint8)    # 4 channels for 3: cannot prepare
    ex.submit(FrameJob(0, now, now + 1.0, bad_shape, meta='bad_prepare'))
    ex.submit(FrameJob(0, now, now + 1.0, samples['images'][:1], meta='good'))
    assert wait_for(lambda: len(outcomes) == 2)
    # Now a stage that raises: mark the state so the injected stage 2 fails.
    orig = ex.net.stages[0]

    class Marks(torch.nn.Module):
        def forward(self, x):
            return orig(x) - 1e4
    ex.net.stages[0] = Marks()
    ex.submit(FrameJob(0, time.monotonic(), time.monotonic() + 1.0, samples['images'][:1],
                       meta='bad_stage'))
    assert wait_for(lambda: len(outcomes) == 3)
    ex.net.stages[0] = orig
    ex.submit(FrameJob(0, time.monotonic(), time.monotonic() + 1.0, samples['images'][:1],
                       meta='good_after'))
    assert wait_for(lambda: len(outcomes) == 4)
    ex.stop()
    by = {o.job.meta: o for o in outcomes}
    assert by['bad_prepare'].outcome == 'dropped' and by['bad_prepare'].reason == 'error'
    # Stage 2 raised: the frame answers from the exit that ran (stage 1), never stage 2's.
    assert by['bad_stage'].outcome == 'on_time' and by['bad_stage'].results[0].depth == 1
    assert ex.health().stage_failures[2] == 1
    assert by['good'].outcome == 'on_time' and by['good_after'].outcome == 'on_time'


def test_full_queue_drops_with_queue_full_and_stop_drops_pending_as_shutdown():
    outcomes = []
    ex = make_executor(outcomes, max_pending=2)
    samples = load_samples('traffic_lights')
    now = time.monotonic()
    # Not started: submissions are refused as shutdown (never silently).
    ex.submit(FrameJob(0, now, now + 5.0, samples['images'][:1], meta='early'))
    ex.start()
    for i in range(6):
        ex.submit(FrameJob(0, now, now + 5.0, samples['images'][:1], meta=i))
    ex.stop()
    assert wait_for(lambda: len(outcomes) == 7)
    reasons = [o.reason for o in outcomes if o.outcome == 'dropped']
    assert 'queue_full' in reasons
    assert outcomes[0].reason == 'shutdown'
    assert len({id(o.job) for o in outcomes}) == 7


def test_simulation_only_policy_is_refused():
    with pytest.raises(ValueError, match='simulation only'):
        make_executor([], policy='oracle')
