"""The collector in the node: a full collection at configure, pauses timed (gcwatch)."""
import gc

from anytime_infer.node.gcwatch import collect_heap, GcPauses, pause_keys


def test_the_collection_at_configure_is_full_and_timed():
    # The node calls it once everything long-lived is made (torch, numba, the model): the
    # next full collection (60-120 ms, every thread stopped) waits until a quarter as many
    # objects again survived.
    import numba  # noqa: F401 - the node's heavy modules, as in the node
    import torch  # noqa: F401
    from anytime_infer.scheduler import dpkernel  # noqa: F401
    pauses = GcPauses()
    pauses.install()
    try:
        pauses.report()
        spent = collect_heap()
        rep = pauses.report()
    finally:
        pauses.remove()
    assert spent > 0.0
    assert rep['gc2_count'] == 1 and rep['gc2_pause_ms_max'] <= 1000.0 * spent + 1.0
    assert gc.get_count()[2] == 0          # no collection of a younger generation since


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
