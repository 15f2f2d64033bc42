"""The collector in the node: startup heap frozen, pauses timed (node.gcwatch)."""
import gc

from anytime_infer.node.gcwatch import freeze_heap, GcPauses, pause_keys, unfreeze_heap


def test_a_frozen_heap_leaves_little_for_a_full_collection_to_walk():
    # What made the demo's frames late: a full collection walked every object of torch,
    # rclpy and numba (60-120 ms). Frozen, it walks only what was made since.
    import numba  # noqa: F401 - the node's heavy modules, as in the node
    import torch  # noqa: F401
    from anytime_infer.scheduler import dpkernel  # noqa: F401
    try:
        before = len(gc.get_objects())
        frozen = freeze_heap()
        after = len(gc.get_objects())
        assert frozen >= 0.8 * before
        assert after < 0.05 * before, (before, after)
        garbage = [[i] for i in range(1000)]       # made after the freeze: still walked
        assert len(gc.get_objects()) >= after + 1000
        del garbage
    finally:
        unfreeze_heap()
    assert gc.get_freeze_count() == 0
    assert len(gc.get_objects()) >= 0.8 * before


def test_collections_are_counted_and_timed_per_generation():
    pauses = GcPauses()
    pauses.install()
    pauses.install()                               # idempotent
    try:
        pauses.report()
        gc.collect()
        gc.collect(0)
        rep = pauses.report()
        assert set(rep) == set(pause_keys())
        assert rep['gc2_count'] >= 1 and rep['gc0_count'] >= 1
        assert rep['gc2_pause_ms_max'] > 0.0
        assert pauses.report()['gc2_count'] == 0   # since the last report
    finally:
        pauses.remove()
    assert pauses._callback not in gc.callbacks
