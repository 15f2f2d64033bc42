"""Budget bounds (``scheduler.bounds``, ``anytime-infer bound``): exact on small cases."""
import json
import subprocess
import sys

from anytime_infer.scheduler.bounds import budget_bound, information_groups, \
    lagrangian_policy
from anytime_infer.scheduler.traces import Trace
import numpy as np
import pytest


def two_exit_trace(conf1, ok1, ok2) -> Trace:
    """Return a two-exit trace from columns (exit 2's confidence is never used)."""
    n = len(conf1)
    conf = np.stack([np.asarray(conf1, float), np.full(n, 0.9)], axis=1)
    return Trace([str(i) for i in range(n)], conf,
                 np.stack([np.asarray(ok1, bool), np.asarray(ok2, bool)], axis=1))


def test_uninformative_confidence_buys_a_share_of_stage_2():
    """One confidence for all: the best is stage 2 on the share of frames the budget pays."""
    rng = np.random.default_rng(1)
    ok1, ok2 = rng.random(1000) < 0.6, rng.random(1000) < 0.9
    trace = two_exit_trace(np.full(1000, 0.5), ok1, ok2)
    s = [1.0, 3.0]
    for load, share in ((2.0, 1 / 3), (4.0 / 3.0, 2 / 3)):
        b = budget_bound(trace, s, load, 'last')
        want = ok1.mean() + share * (ok2.mean() - ok1.mean())
        assert b.accuracy == pytest.approx(want, abs=1e-6)
        assert b.cost_s == pytest.approx(4.0 / load, rel=1e-6)
        assert b.mean_depth == pytest.approx(1 + share, abs=1e-6)


def test_confidence_that_reveals_the_answer_reaches_the_oracle():
    """Low confidence exactly where exit 1 is wrong and exit 2 right: last equals oracle."""
    rng = np.random.default_rng(2)
    ok1 = rng.random(1000) < 0.7
    ok2 = np.ones(1000, bool)
    conf1 = np.where(ok1, 0.95, 0.2)
    trace = two_exit_trace(conf1, ok1, ok2)
    for load in (1.0, 1.2, 2.0, 3.0):
        oracle = budget_bound(trace, [1.0, 1.0], load, 'oracle')
        last = budget_bound(trace, [1.0, 1.0], load, 'last')
        assert last.accuracy == pytest.approx(oracle.accuracy, abs=1e-9)


def test_oracle_stops_at_the_first_correct_exit_when_time_allows():
    ok = np.array([[1, 1, 1], [0, 1, 0], [0, 0, 1], [0, 0, 0]], bool)
    trace = Trace(list('abcd'), np.full((4, 3), 0.5), ok)
    b = budget_bound(trace, [1.0, 1.0, 1.0], 1.0, 'oracle')
    assert b.accuracy == pytest.approx(0.75)
    # The wrong-everywhere frame stops at exit 1; the others where they are first right.
    assert b.mean_depth == pytest.approx((1 + 2 + 3 + 1) / 4)


def test_more_information_and_less_load_never_lower_the_bound():
    """
    History refines the last bin, so its optimum is at least the last-bin policy's.

    Over nested information (oracle, history) the pass is exact, so the bound can only fall
    as the load rises; the last-bin policy plans on tables over all frames, as the DP does,
    and is not held to that.
    """
    rng = np.random.default_rng(3)
    n = 2000
    conf = rng.random((n, 4))
    ok = rng.random((n, 4)) < 0.3 + 0.6 * conf     # confidence is informative
    trace = Trace([str(i) for i in range(n)], conf, ok)
    s = [0.2, 0.5, 0.4, 0.7]
    prev = None
    for load in (1.0, 2.0, 3.0, 6.0):
        r = {k: budget_bound(trace, s, load, k, bins=4).accuracy
             for k in ('oracle', 'history', 'last')}
        assert r['oracle'] >= r['history'] >= r['last'] - 1e-9, r
        if prev is not None:
            assert r['oracle'] <= prev['oracle'] + 1e-12, (load, r, prev)
            assert r['history'] <= prev['history'] + 1e-9, (load, r, prev)
        prev = r


def test_a_budget_below_the_mandatory_stage_answers_a_share_of_frames():
    trace = two_exit_trace(np.full(10, 0.5), [True] * 10, [True] * 10)
    b = budget_bound(trace, [3.0, 1.0], 2.0, 'last')     # 2 s per frame, stage 1 takes 3
    assert b.accuracy == pytest.approx(2 / 3)


def test_history_groups_are_nested_and_last_groups_are_bins():
    conf = np.array([[0.1, 0.9], [0.1, 0.2], [0.8, 0.9], [0.8, 0.2]])
    trace = Trace(list('abcd'), conf, np.ones((4, 2), bool))
    hist = information_groups(trace, 'history', bins=2, min_group=1)
    last = information_groups(trace, 'last', bins=2)
    assert len(set(hist[:, 1])) == 4 and len(set(hist[:, 0])) == 2
    assert len(set(last[:, 1])) == 2
    with pytest.raises(ValueError, match='unknown information'):
        information_groups(trace, 'psychic')


def test_history_does_not_memorise_frames_of_many_exits():
    """
    Confidences that say nothing buy nothing, also over six exits.

    Met on a synthetic 6-exit trace of 3000 frames: without a floor on the groups' size,
    most history groups after exit 5 held a frame or two, and the bound of uninformative
    confidences reached 0.98 (the oracle's figure, by memorising frames) where the best
    exit gives 0.81.
    """
    rng = np.random.default_rng(0)
    n = 3000
    ok = rng.random((n, 6)) < np.linspace(0.4, 0.8, 6)
    trace = Trace([str(i) for i in range(n)], rng.random((n, 6)), ok)
    best_exit = ok.mean(axis=0).max()
    hist = budget_bound(trace, [1.0] * 6, 1.0, 'history', bins=10).accuracy
    assert hist <= best_exit + 0.02, (hist, best_exit)
    assert budget_bound(trace, [1.0] * 6, 1.0, 'history', bins=10, min_group=1).accuracy \
        > best_exit + 0.1       # what the floor prevents
    groups = information_groups(trace, 'history', bins=10, min_group=30)
    for k in range(6):
        assert np.bincount(groups[:, k]).min() >= 30
        if k:   # nested: each group lies within one group of the exit before
            pairs = np.unique(np.stack([groups[:, k], groups[:, k - 1]], axis=1), axis=0)
            assert len(pairs) == len(np.unique(groups[:, k]))


def test_lagrangian_policy_runs_everything_when_time_is_free():
    ok = np.array([[0, 1], [1, 0]], bool)
    acc, cost, depth = lagrangian_policy(np.zeros((2, 2), np.int64), ok, [1.0, 2.0], 0.0)
    # Same group: going on is worth 0.5 and stopping 0.5; ties stop.
    assert (acc, cost, depth) == (0.5, 1.0, 1.0)


def test_bad_arguments_are_refused():
    trace = two_exit_trace(np.full(4, 0.5), [True] * 4, [True] * 4)
    with pytest.raises(ValueError, match='positive stage times'):
        budget_bound(trace, [1.0], 1.0, 'last')
    with pytest.raises(ValueError, match='load'):
        budget_bound(trace, [1.0, 1.0], 0.0, 'last')


def test_cli_prints_the_bounds_of_the_bundled_model():
    p = subprocess.run([sys.executable, '-m', 'anytime_infer.cli', 'bound', '--model',
                        'fashion_mnist', '--loads', '3', '--json'],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])['3']
    assert 0 < r['last']['accuracy'] < r['oracle']['accuracy'] <= 1
    bad = subprocess.run([sys.executable, '-m', 'anytime_infer.cli', 'bound', '--trace',
                          '/nonexistent.csv'], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and 'stage-ms' in bad.stderr


@pytest.mark.slow
def test_the_simulated_free_dp_stays_under_its_information_bound():
    """
    The DP in the simulator, decisions free, is at most the bound of what it knows.

    fashion_mnist at stage times /5 and 3x (the case of ``checks/planner``): the bound is
    optimistic (no deadlines, tables fitted on the trace), so the simulated DP can only be
    below it, up to the sampling noise of 2000 frames drawn from 10000 (sd ~0.7 points).
    """
    import os
    from anytime_infer.evaluation import run_policy, trace_source
    import anytime_infer
    path = os.path.join(os.path.dirname(anytime_infer.__file__), 'models', 'fashion_mnist',
                        'trace_test.csv.gz')
    ms = [0.0378, 0.1106, 0.0894, 0.1388]
    src = trace_source(path, ms, seed=11)     # as `simulate --trace --stage-ms` does
    bound = budget_bound(src.trace, [m / 1000 for m in ms], 3.0, 'last')
    out = run_policy(src, 'imprecise_dp', 3.0, frames=2000, seed=11, charge_decisions=False)
    print('bound', bound.accuracy, 'simulated free dp', out['accuracy'])
    assert out['accuracy'] <= bound.accuracy + 0.015
