"""
The worker's cheaper paths keep its behaviour (bundled fashion_mnist, CPU).

Crops are normalised at submit in the caller's thread (the worker converts only what
failed there); the delivery thread is woken once per worker cycle, so an outcome must
still reach the callback while the executor runs (not only at ``stop``), with and without
the deadline watcher (anytime and plain policies).
"""
import threading
import time

from anytime_infer.camera_player import load_samples
from anytime_infer.executor import FrameJob
from anytime_infer.faults import make_executor
import numpy as np
import pytest
import torch


@pytest.fixture(scope='module')
def images():
    return load_samples('fashion_mnist')['images']


def test_crops_prepared_at_submit_equal_the_workers_conversion(images):
    ex, _ = make_executor()
    for crops in (images[:1], images[:3]):
        x = ex._prepare(crops)
        job = FrameJob(0, 0.0, 1.0, crops)
        assert x is not None and torch.equal(x, ex._inputs([job])[0])
    # Not a batch of crops: left to the worker (which converts it or drops the frame).
    for bad in (images[0], images[:0], [images[0]], None):
        assert ex._prepare(bad) is None


@pytest.mark.parametrize('policy', ['imprecise_dp', 'edf_full'])
def test_outcomes_reach_the_callback_while_running(images, policy):
    got = threading.Event()
    ex, outcomes = make_executor(policy=policy, on_outcome=lambda o: got.set())
    ex.start()
    try:
        now = ex.clock()
        ex.submit(FrameJob(0, now, now + 1.0, images[:1], meta='one'))
        # The worker runs the frame and goes idle: its outcome must not wait for stop().
        assert got.wait(2.0)
        delivered = ex.clock()
    finally:
        ex.stop()
    assert [o.outcome for o in outcomes] == ['on_time']
    # Woken at once (the delivery thread would find it by itself only after 0.1 s).
    assert delivered - outcomes[0].published_at < 0.05


def test_a_frame_the_caller_cannot_prepare_is_converted_by_the_worker(images):
    ex, outcomes = make_executor()
    ex.start()
    try:
        now = ex.clock()
        crops = [images[0], images[1]]       # a list, not an array: not prepared at submit
        ex.submit(FrameJob(0, now, now + 1.0, crops, rois=[(0, 0, 28, 28), (1, 0, 28, 28)],
                           meta='list'))
        ex.submit(FrameJob(0, now, now + 1.0, np.zeros((1, 64, 32, 4), np.uint8),
                           meta='bad'))
        end = time.monotonic() + 3.0
        while len(outcomes) < 2 and time.monotonic() < end:
            time.sleep(0.01)
    finally:
        ex.stop()
    by = {o.job.meta: o for o in outcomes}
    assert len(outcomes) == 2
    assert by['list'].outcome == 'on_time' and len(by['list'].results) == 2
    assert (by['bad'].outcome, by['bad'].reason) == ('dropped', 'error')
