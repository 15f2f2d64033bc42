"""
The worker's cheaper paths give what the paths they replace gave (bundled fashion_mnist).

The exit post-processed in plain Python (small outputs) against the tempered softmax in
torch, non-finite rows included; crops normalised by the lookup table against
``to_tensor_batch``; the deadline guard's quantile against numpy's percentile; and a
frame of several crops, run in batches at 2x, still ends in one outcome with a result per
crop at the depth the worker reached.
"""
import random
import time

from anytime_infer.executor import EXIT_PY_MAX, FrameJob, upper_quantile
from anytime_infer.faults import make_executor
from anytime_infer.model.data import Preprocess, to_tensor_batch
import numpy as np
import pytest
import torch


@pytest.fixture(scope='module')
def ex():
    return make_executor()[0]


def test_exit_in_python_equals_the_tempered_softmax(ex):
    torch.manual_seed(0)
    for rows in (1, 3, 8):
        logits = torch.randn(rows, 10) * 4
        assert logits.numel() <= EXIT_PY_MAX
        for stage in range(1, ex.num_stages + 1):
            conf, pred, finite = ex._exit(logits, stage)
            p = torch.softmax(logits / ex.temps[stage - 1], dim=1)
            assert np.allclose(conf, p.max(dim=1).values.numpy(), atol=1e-6)
            assert list(pred) == p.argmax(dim=1).tolist() and all(finite)
    logits = torch.randn(3, 10)
    logits[1, 4] = float('nan')
    logits[2, 0] = float('inf')
    conf, pred, finite = ex._exit(logits, 2)
    assert list(finite) == [True, False, False] and np.isfinite(conf[0])
    # A large output takes the numpy path: the same figures.
    big = torch.randn(EXIT_PY_MAX // 10 + 1, 10)
    c1, p1, f1 = ex._exit(big, 3)
    c2, p2, f2 = ex._exit_py(big.tolist(), float(ex.temps[2]))
    assert np.allclose(c1, c2, atol=1e-6) and list(p1) == p2 and list(f1) == f2


def test_crops_normalised_by_the_table_equal_to_tensor_batch(ex):
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    x = ex._to_tensor(crops)
    assert x.shape == (5, 1, 28, 28) and x.is_contiguous()
    assert torch.allclose(x, to_tensor_batch(crops, ex.pre), atol=1e-6)
    # Three channels (another card's preprocessing).
    pre = Preprocess(channels=3, height=8, width=9, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4])
    std = np.asarray(pre.std, dtype=np.float32)
    lut = (np.arange(256, dtype=np.float32)[:, None] / (255.0 * std)
           - np.asarray(pre.mean, dtype=np.float32) / std).astype(np.float32)
    saved = ex._in_lut
    try:
        ex._in_lut = lut
        rgb = rng.integers(0, 256, (2, 8, 9, 3), dtype=np.uint8)
        y = ex._to_tensor(rgb)
        assert y.shape == (2, 3, 8, 9) and y.is_contiguous()
        assert torch.allclose(y, to_tensor_batch(rgb, pre), atol=1e-5)
    finally:
        ex._in_lut = saved


def test_upper_quantile_is_numpys_linear_percentile():
    rnd = random.Random(0)
    for n in (1, 2, 3, 20, 101, 4000):
        values = [rnd.gauss(0.0, 1.0) for _ in range(n)]
        for q in (99.0, 95.0, 100.0, 50.0):
            assert upper_quantile(values, q) == pytest.approx(np.percentile(values, q),
                                                              abs=1e-12)


def test_frames_of_several_crops_end_once_with_a_result_per_crop():
    from anytime_infer.camera_player import load_samples
    images = load_samples('fashion_mnist')['images']
    ex, outcomes = make_executor()
    rate = 2.0 / ex.profile.full_depth_mean()      # 2x: stage 1 runs in batches
    ex.start()
    n = 0
    try:
        t = ex.clock()
        end = t + 1.0
        while ex.clock() < end:
            now = ex.clock()
            crops = images[[n % len(images), (n + 1) % len(images), (n + 2) % len(images)]]
            ex.submit(FrameJob(n % 2, now, now + 0.05, crops,
                               rois=[(i, 0, 28, 28) for i in range(3)]))
            n += 1
            time.sleep(max(0.0, t + n * 3 / rate - ex.clock()))
    finally:
        ex.stop()
    ids = sorted(o.job.frame_id for o in outcomes)
    assert ids == list(range(n))
    answered = [o for o in outcomes if o.outcome != 'dropped']
    assert len(answered) > n // 2
    for o in answered:
        # One result per crop answered, each with its own roi and a valid depth.
        rois = [r.roi for r in o.results]
        assert len(rois) == len(set(rois)) and 1 <= len(rois) <= 3
        for r in o.results:
            assert 1 <= r.depth <= r.num_stages and 0.0 < r.confidence <= 1.0
            assert r.label == ex.classes[r.class_id]
