"""
The executor's planner modes and its overhead figures (bundled fashion_mnist, CPU).

Thread mode: a planner thread plans while a stage runs and the worker decides from those
plans (counted lookups vs fallbacks); every frame still ends in exactly one outcome,
delivered by the outcome thread and all delivered when stop() returns. The overhead
figures of ``stats``/``health`` exist and add up.
"""
import threading
import time

from anytime_infer.executor import ExecutorHealth, FrameJob, PLANNER_MODES
from anytime_infer.faults import drive, FaultyStages, make_executor
from anytime_infer.scheduler.planner import choose_planner
import numpy as np
import pytest


@pytest.fixture(scope='module')
def images():
    from anytime_infer.camera_player import load_samples
    return load_samples('fashion_mnist')['images']


def run(images, planner, load=1.5, seconds=2.0, **kw):
    """Drive an executor at ``load`` x its full-depth capacity; return it and outcomes."""
    ex, outcomes = make_executor(planner=planner, **kw)
    rate = load / ex.profile.full_depth_mean()
    ex.start()
    try:
        drive(ex, images, rate, 0.05, [(seconds, None)], FaultyStages(ex.net), cameras=2)
    finally:
        ex.stop()
    return ex, outcomes


def one_outcome_each(outcomes):
    ids = [o.job.frame_id for o in outcomes]
    return len(ids) == len(set(ids)) and sorted(ids) == list(range(len(ids)))


@pytest.mark.slow
def test_thread_mode_decides_from_plans_and_answers_every_frame_once(images):
    ex, outcomes = run(images, 'thread')
    st = ex.stats()
    assert st['planner'] == 'thread'
    assert one_outcome_each(outcomes) and len(outcomes) > 500, len(outcomes)
    # Plans were made by the planner thread and the worker followed them at most of the
    # boundaries where the front had a result (the rest: the cheap safe action).
    assert st['plans'] > 100 and len(ex.planner_s) > 100, st
    assert st['plan_lookups'] > st['plan_fallbacks'], st
    answered = [o for o in outcomes if o.outcome != 'dropped']
    assert answered and max(r.depth for o in answered for r in o.results) >= 2
    # The planner thread ended with the executor.
    assert not any(t.name == 'anytime_infer_planner' for t in threading.enumerate())


@pytest.mark.slow
def test_inline_mode_makes_no_plans(images):
    ex, outcomes = run(images, 'inline', seconds=1.0)
    st = ex.stats()
    assert st['planner'] == 'inline' and ex._planner is None
    assert st['plans'] == st['plan_lookups'] == st['plan_fallbacks'] == 0
    assert one_outcome_each(outcomes)


def test_planner_modes_and_auto_choice():
    with pytest.raises(ValueError, match='planner must be one of'):
        make_executor(planner='sometimes')
    assert PLANNER_MODES == ('auto', 'thread', 'inline')
    ex, _ = make_executor(planner='auto')
    assert ex.planner_mode in ('thread', 'inline')
    # auto follows the measured choice (ratio of an inline decision to a mean stage).
    assert ex._auto_choice is not None and ex._auto_choice[0] == ex.planner_mode
    assert choose_planner(ex.profile)[0] in ('thread', 'inline')
    # A policy without contingent plans always decides inline.
    ex, _ = make_executor(planner='thread', policy='greedy')
    assert ex.planner_mode == 'inline'


@pytest.mark.parametrize('planner,policy', [
    ('inline', 'greedy'), ('thread', 'greedy'), ('auto', 'greedy'), ('auto', 'edf_full'),
    ('auto', 'mandatory_only'), ('auto', 'fifo_full'), ('auto', 'latest_full')])
def test_a_policy_without_plans_decides_with_its_own_decision(images, planner, policy):
    # Met in stop 23: the inline link ran ``decide_slots``, which greedy inherits from
    # the DP, so an executor (and the node) told ``policy: greedy`` ran the DP's decisions.
    ex, outcomes = make_executor(planner=planner, policy=policy)
    boundaries = []
    real = ex.policy.decide

    def counted(now, tasks):
        boundaries.append(now)
        return real(now, tasks)
    ex.policy.decide = counted
    rate = 1.0 / ex.profile.full_depth_mean()
    ex.start()
    try:
        drive(ex, images, rate, 0.05, [(0.3, None)], FaultyStages(ex.net), cameras=2)
    finally:
        ex.stop()
    assert one_outcome_each(outcomes) and len(outcomes) > 20, len(outcomes)
    runs = len(ex.stage_s)
    # The policy's own decision before every stage run (and at boundaries that ran none).
    assert runs > 20 and len(boundaries) >= runs, (len(boundaries), runs)
    assert ex.stats()['planner'] == 'inline'


@pytest.mark.slow
def test_overhead_figures_exist_and_add_up(images):
    ex, _ = run(images, 'thread', load=2.0, seconds=1.5)
    st = ex.stats()
    parts = ('admit_share', 'decide_share', 'exit_share', 'publish_share', 'dispatch_share')
    assert st['busy_cycles'] > 100
    assert 0.0 < st['overhead_share'] < 1.0
    for p in parts:
        assert st[p] >= -1e-9, (p, st[p])
    assert abs(sum(st[p] for p in parts) - st['overhead_share']) < 1e-9
    assert st['exit_share'] > 0 and st['publish_share'] > 0 and st['decide_share'] > 0
    assert 0.0 < st['overhead_ms_p50'] <= st['overhead_ms_p99']
    h = ex.health()
    assert isinstance(h, ExecutorHealth)
    for key in ('overhead_ms_p50', 'overhead_ms_p99', 'overhead_share') + parts:
        assert getattr(h, key) == pytest.approx(st[key]), key
    assert h.planner == 'thread' and h.plan_lookups == st['plan_lookups']
    assert h.plan_fallbacks == st['plan_fallbacks']


def test_outcomes_are_delivered_off_the_worker_and_all_by_stop(images):
    """A slow callback (a slow publisher) runs on the outcome thread; stop() waits for it."""
    names = []

    def slow(o):
        names.append(threading.current_thread().name)
        time.sleep(0.003)
    ex, outcomes = make_executor(on_outcome=slow, planner='thread')
    ex.start()
    n = 60
    for i in range(n):
        now = ex.clock()
        ex.submit(FrameJob(i % 2, now, now + 0.02, images[i % len(images)][None], meta=i))
        time.sleep(0.0005)
    ex.stop()
    # Everything answered once when stop() returns, although the callback lags behind.
    assert len(outcomes) == n and one_outcome_each(outcomes)
    assert 'anytime_infer_outcomes' in names
    assert 'anytime_infer_worker' not in names and 'anytime_infer_deadlines' not in names


@pytest.mark.slow
def test_policy_switch_in_thread_mode_keeps_planning(images):
    """A switch to another contingent policy mid-run makes a new link; frames go on."""
    ex, outcomes = make_executor(planner='thread')
    rate = 1.0 / ex.profile.full_depth_mean()
    faults = FaultyStages(ex.net)
    ex.start()
    try:
        drive(ex, images, rate, 0.05, [(0.7, None)], faults, cameras=2)
        before = ex.stats()['plans']
        ex.set_policy('imprecise_dp_flat')
        drive(ex, images, rate, 0.05, [(0.7, None)], faults, cameras=2)
        st = ex.stats()
    finally:
        ex.stop()
    assert ex.policy.name == 'imprecise_dp_flat'
    assert st['plans'] > before > 0, (before, st['plans'])
    ids = [o.job.frame_id for o in outcomes]
    assert len(ids) == len(set(ids)) and len(ids) > 100
    assert np.mean([o.outcome != 'dropped' for o in outcomes]) > 0.5
