"""
Faults in the executor, injected around the real bundled model's ``run_stage``, in-process.

Stalls and throttling (issue 16 defect 1, issue 13 item 4): the executor as the node
configures it (fashion_mnist, imprecise_dp, percentile 99, CPU, one torch thread), frames
at a fixed rate with 50 ms deadlines. The machine running the suite is shared and busy, so
each check compares the executor with itself before the fault, not with a speed.
"""
import os
import shutil
import threading
import time

from anytime_infer.camera_player import load_samples
from anytime_infer.executor import COLD_RUNS, FAIL_LIMIT, FrameJob, HEALTH_WINDOW_S
from anytime_infer.faults import drive, Fault, FaultyStages, make_executor, \
    recovery_time, window
from anytime_infer.model.store import CARD, read_json, resolve_model_dir, sha256_of, \
    WEIGHTS, write_json
import numpy as np
import pytest
import torch

DEADLINE = 0.050
PRE, STALL = 1.5, 2.0


@pytest.fixture(scope='module')
def images():
    torch.set_num_threads(1)          # as the node configures torch (torch_threads 1)
    return load_samples('fashion_mnist')['images']


def wait_for(pred, timeout=20.0):
    end = time.monotonic() + timeout
    while not pred() and time.monotonic() < end:
        time.sleep(0.01)
    return pred()


def submit_one(ex, img, meta, deadline=1.0):
    now = ex.clock()
    ex.submit(FrameJob(0, now, now + deadline, img[None], meta=meta))


def served_normally(scenario, attempts=3):
    """
    Run ``scenario()`` until its fault-free lead-in was served normally; return its result.

    Normally: at least 60 % of the frames before the fault on time (a lock-out answers none
    after it; the checks compare with this level). Other work on a shared machine can
    starve this process so that even the lead-in fails; a run like that has nothing to
    compare with and is repeated, and after ``attempts`` the test is skipped with the
    figures that say so.
    """
    seen = []
    for _ in range(attempts):
        res = scenario()
        if res['before']['on_time'] >= 0.6:
            return res
        seen.append(round(res['before']['on_time'], 3))
    pytest.skip(f'machine too busy: on-time share before the fault {seen} < 0.6 in every run')


def stall_scenario(images, rate, post):
    ex, outcomes = make_executor()
    faults = FaultyStages(ex.net)
    ex.start()
    try:
        drive(ex, images, rate, DEADLINE,
              [(PRE, None), (STALL, Fault(delay_s=0.060)), (post, None)], faults)
    finally:
        ex.stop()
    return {'ex': ex, 'outcomes': outcomes, 'before': window(outcomes, 0.5, PRE)}


@pytest.mark.slow
@pytest.mark.parametrize('rate,depth_tol,share', [(20, 0.5, 0.9), (100, 0.5, 0.9),
                                                  (400, 4.0, 0.6)])
def test_depth_and_on_time_share_recover_within_2s_after_a_stall(images, rate, depth_tol,
                                                                 share):
    """
    Issue 16.1 in-process: every stage 60 ms slower for 2 s, then normal again.

    Before the fix the stall's measurements stayed in the estimates: stage 1 was planned
    at 61 ms > 50 ms and every later frame was dropped ``infeasible`` at arrival, forever
    (here at 20 and 400 Hz every time, at 100 Hz in some runs). At 400 Hz (about the
    calibrated full-depth capacity) the depth is the planner's answer to this shared
    machine's momentary load, before as after the stall, and the on-time share varies
    with it too: there both are held less closely to the level of before.
    """
    post = 3.5
    res = served_normally(lambda: stall_scenario(images, rate, post))
    ex, outcomes, before = res['ex'], res['outcomes'], res['before']
    during = window(outcomes, PRE, PRE + STALL)
    after = window(outcomes, PRE + STALL + 2.0, PRE + STALL + post)
    back = recovery_time(outcomes, PRE + STALL, before, horizon=post, depth_tol=depth_tol,
                         share=share)
    print(f'{rate} Hz: before {before}, during {during}, after {after}, back after {back} s')
    assert during['on_time'] < 0.5 * before['on_time']      # the stall did hit
    # Back at the level of before within 2 s (on time >= share of it, depth within
    # depth_tol), and not locked out later (loosely: other work on this shared machine
    # moves the level by itself; a lock-out answers nothing, or everything at depth 1).
    timeline = [(round(t, 1), round(w['on_time'], 2), round(w['depth'], 2))
                for t in np.arange(0, PRE + STALL + post, 0.5)
                for w in [window(outcomes, t, t + 0.5)]]
    assert back <= 2.0, (before, back, timeline)
    assert after['frames'] >= 0.8 * rate * (post - 2.0)
    assert after['on_time'] >= 0.5 * before['on_time'], (before, after)
    assert ex.times.plan(1) < DEADLINE
    assert len(outcomes) == len({id(o.job) for o in outcomes})


def throttle_scenario(images, hot, post):
    ex, outcomes = make_executor()
    faults = FaultyStages(ex.net)
    p50_1 = ex.times.calibrated(1)[0]
    series = []

    def probe(t):
        h = ex.health()
        series.append((t, ex.times.plan(1), h.stage_slowdown.get(1, 1.0) * p50_1, h.stalled))
    ex.start()
    try:
        drive(ex, images, 100, DEADLINE,
              [(PRE, None), (hot, Fault(factor=10.0)), (post, None)], faults, probe=probe)
    finally:
        ex.stop()
    return {'ex': ex, 'outcomes': outcomes, 'series': series,
            'before': window(outcomes, 0.5, PRE)}


@pytest.mark.slow
def test_a_10x_slowdown_is_detected_and_planned_for_within_a_second(images, caplog):
    """Issue 13.4: thermal throttling (every stage 10x longer) at 100 Hz, 50 ms deadlines."""
    hot, post = 3.0, HEALTH_WINDOW_S + 1.0
    res = served_normally(lambda: throttle_scenario(images, hot, post))
    outcomes, series, before = res['outcomes'], res['series'], res['before']
    # The stage-1 time measured under throttling, and the plan one second into it.
    hot_time = np.median([m for t, _, m, _ in series if PRE + 0.5 <= t < PRE + hot])
    plan_at_1s = [p for t, p, _, _ in series if PRE + 1.0 <= t < PRE + hot]
    assert min(plan_at_1s) >= 0.9 * hot_time, (min(plan_at_1s), hot_time)
    # WARN within 1 s and while throttled; OK again after (as often as before: this
    # shared machine alone sometimes slows a stage by the stall factor).
    stalled_before = np.mean([s for t, _, _, s in series if 0.5 <= t < PRE])
    assert any(s for t, _, _, s in series if PRE <= t < PRE + 1.0)
    assert 'stall: stage' in caplog.text                     # and a log line says so
    assert np.mean([s for t, _, _, s in series if PRE + 1.0 <= t < PRE + hot]) >= 0.9
    assert np.mean([s for t, _, _, s in series if t >= PRE + hot + HEALTH_WINDOW_S]) <= \
        max(0.2, stalled_before + 0.2)
    settled = window(outcomes, PRE + 1.0, PRE + hot)
    whole = window(outcomes, PRE, PRE + hot)
    print('before:', before, 'throttled:', whole, 'from 1 s in:', settled)
    # Misses bounded: a few while the plans adapt, then about as many as before.
    assert whole['late'] <= before['late'] + 0.08
    assert settled['late'] <= before['late'] + 0.05
    assert settled['on_time'] >= 0.25          # it goes on answering
    after = window(outcomes, PRE + hot + 2.0, PRE + hot + post)
    assert after['depth'] >= min(before['depth'] - 1.0, 1.5), (before, after)


def test_a_stage_that_raises_or_runs_out_of_memory_ends_its_tasks_and_the_executor_goes_on(
        images):
    """Issue 13.4: raise (stage 1, stage 3) and CUDA out-of-memory (stage 1), injected."""
    ex, outcomes = make_executor()
    faults = FaultyStages(ex.net)
    ex.start()
    try:
        for meta, fault in (('raise_1', Fault(raise_error=True, stages=[1])),
                            ('oom_1', Fault(oom=True, stages=[1])),
                            ('raise_3', Fault(raise_error=True, stages=[3])),
                            ('healthy', None)):
            faults.set_fault(fault)
            submit_one(ex, images[0], meta)
            assert wait_for(lambda: any(o.job.meta == meta for o in outcomes))
    finally:
        ex.stop()
    by = {o.job.meta: o for o in outcomes}
    assert len(outcomes) == 4
    for meta in ('raise_1', 'oom_1'):       # nothing to answer from: dropped, error
        assert (by[meta].outcome, by[meta].reason, by[meta].results) == ('dropped', 'error', [])
    # Stage 3 failed: the answer of the deepest exit that ran (2), never one of stage 3.
    assert by['raise_3'].outcome == 'on_time' and by['raise_3'].results[0].depth == 2
    assert by['healthy'].outcome == 'on_time' and by['healthy'].results[0].depth == 4
    h = ex.health()
    assert h.stage_failures == {1: 2, 2: 0, 3: 1, 4: 0}
    assert h.max_depth == 4             # not failing in a row: nothing disabled
    assert 'stage 1: 2' in h.message and 'stage 3: 1' in h.message


def test_nan_output_is_never_published_and_a_stage_that_keeps_failing_is_disabled(images):
    """A stage returning NaN (injected): depth 1 answers; FAIL_LIMIT in a row disable it."""
    ex, outcomes = make_executor()
    faults = FaultyStages(ex.net)
    faults.set_fault(Fault(nan=True, stages=[2]))
    ex.start()
    n = FAIL_LIMIT + 3
    try:
        for i in range(n):
            submit_one(ex, images[i], i)
            assert wait_for(lambda: len(outcomes) == i + 1)
    finally:
        ex.stop()
    assert all(o.outcome == 'on_time' for o in outcomes)
    assert [o.results[0].depth for o in outcomes] == [1] * n
    assert all(np.isfinite(o.results[0].confidence) for o in outcomes)
    h = ex.health()
    assert h.stage_failures[2] == FAIL_LIMIT      # then stage 2 was no longer run
    assert faults.runs[2] == FAIL_LIMIT
    assert h.max_depth == 1 and 'stages 2..4 disabled' in h.message


def test_stage_runs_are_recorded_once_each_and_off_the_workers_path(images):
    """
    Every stage run reaches the stage-time estimates once, recorded by the delivery thread.

    Not the first COLD_RUNS of each stage; runs far above their plan are recorded by the
    worker at once; health sees the runs as well.
    """
    ex, outcomes = make_executor()
    faults = FaultyStages(ex.net)
    where = []
    observe = ex.times.observe

    def spy(*args, **kw):
        where.append(threading.current_thread().name)
        return observe(*args, **kw)
    ex.times.observe = spy
    ex.start()
    n = 40
    try:
        for i in range(n):
            submit_one(ex, images[i], i)
            assert wait_for(lambda: len(outcomes) == i + 1)
        h = ex.health()
    finally:
        ex.stop()
    assert [o.outcome for o in outcomes] == ['on_time'] * n
    # Every run but the first COLD_RUNS of each stage (not planned with).
    assert len(where) == sum(faults.runs.values()) - COLD_RUNS * ex.num_stages >= n
    assert where.count('anytime_infer_outcomes') >= 0.8 * len(where), where
    assert set(where) <= {'anytime_infer_outcomes', 'anytime_infer_worker', 'MainThread'}
    assert set(h.stage_slowdown) == set(faults.runs)


def test_failures_not_in_a_row_disable_nothing_while_successes_wait_to_be_recorded(images):
    """
    Stage 2 fails every other run while the delivery thread is held up in a slow callback.

    The successful runs in between are queued, not yet recorded; a failure is recorded
    after them (they end its streak), so FAIL_LIMIT failures that are not in a row never
    disable the stage.
    """
    ex, outcomes = make_executor(on_outcome=lambda o: time.sleep(0.05))
    real, runs = ex.net.run_stage, []

    def every_other(k, state):
        state, logits = real(k, state)
        if k == 2:
            runs.append(k)
            if len(runs) % 2:
                logits = logits * float('nan')
        return state, logits
    ex.net.run_stage = every_other
    ex.start()
    n = 2 * FAIL_LIMIT + 2
    try:
        for i in range(n):       # one at a time: stage 2 runs once per frame, no batch
            submit_one(ex, images[i], i, deadline=5.0)
            assert wait_for(lambda: len(runs) == i + 1)
        assert wait_for(lambda: len(outcomes) == n)
        h = ex.health()
    finally:
        ex.stop()
    assert len(runs) == n            # stage 2 ran for every frame: never disabled
    assert h.stage_failures[2] == n // 2 > FAIL_LIMIT
    assert h.max_depth == ex.num_stages
    depth = sorted(o.results[0].depth for o in outcomes)
    assert depth == [1] * (n // 2) + [ex.num_stages] * (n // 2)


@pytest.fixture
def nan_model(tmp_path):
    """Copy the bundled fashion_mnist into tmp_path with stage 3's conv weights NaN."""
    src = resolve_model_dir('fashion_mnist')
    dst = tmp_path / 'fashion_nan'
    shutil.copytree(src, dst)
    state = torch.load(os.path.join(src, WEIGHTS), weights_only=True)
    convs = [k for k, v in state.items() if k.startswith('stages.2.') and v.dim() == 4]
    assert convs
    for k in convs:
        state[k] = torch.full_like(state[k], float('nan'))
    torch.save(state, dst / WEIGHTS)
    card = read_json(str(dst / CARD), 'card')
    card['sha256'] = sha256_of(str(dst / WEIGHTS))      # so that it loads
    write_json(str(dst / CARD), card)
    return str(dst)


def test_a_model_with_nan_weights_answers_at_depth_2_never_with_nan(images, nan_model):
    """
    Issue 16.7: stage 3's conv weights NaN, light load.

    Before the fix all frames were published on time at depth 4 with confidence NaN.
    """
    ex, outcomes = make_executor(folder=nan_model)
    ex.start()
    n = 40
    try:
        for i in range(n):
            submit_one(ex, images[i], i, deadline=DEADLINE)
            time.sleep(0.02)
        assert wait_for(lambda: len(outcomes) == n)
    finally:
        ex.stop()
    published = [o for o in outcomes if o.results]
    assert len(published) == n
    assert all(np.isfinite(r.confidence) for o in published for r in o.results)
    depths = [r.depth for o in published for r in o.results]
    assert max(depths) == 2                     # never the NaN stage 3, nor past it
    assert depths.count(2) >= 0.8 * n           # (a starved busy machine answers a few at 1)
    assert sum(o.outcome == 'on_time' for o in outcomes) >= 0.9 * n
    h = ex.health()
    assert h.stage_failures[3] == FAIL_LIMIT
    assert h.max_depth == 2 and not h.ok


def test_overhead_is_measured(images):
    """Issue 11.4 (measurement): the worker's time outside the stages, per stage and share."""
    ex, outcomes = make_executor()
    ex.start()
    try:
        for i in range(30):
            submit_one(ex, images[i], i)
            time.sleep(0.005)
        assert wait_for(lambda: len(outcomes) == 30)
    finally:
        ex.stop()
    st = ex.stats()
    assert st['busy_cycles'] >= 30
    assert 0.0 < st['overhead_ms_p50'] <= st['overhead_ms_p99']
    assert 0.0 < st['overhead_share'] < 1.0
    h = ex.health()
    assert h.overhead_ms_p50 == pytest.approx(st['overhead_ms_p50'], rel=0.5)


def test_stop_never_raises_on_a_second_interrupt_and_answers_every_frame(images, caplog):
    """A KeyboardInterrupt inside stop() (a second Ctrl-C) ends nothing early."""
    import signal
    import threading
    ex, outcomes = make_executor()
    faults = FaultyStages(ex.net)
    faults.set_fault(Fault(delay_s=0.5, stages=[1]))      # the worker is inside a long stage
    ex.start()
    for i in range(10):
        submit_one(ex, images[i], i, deadline=5.0)
    time.sleep(0.1)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        ex.stop(timeout=2.0)             # joins the worker while SIGINT arrives
    except KeyboardInterrupt:
        pytest.fail('Executor.stop() raised KeyboardInterrupt')
    finally:
        timer.join()
        signal.signal(signal.SIGINT, old)
    assert 'interrupted while stopping' in caplog.text      # the interrupt did arrive
    assert sorted(o.job.meta for o in outcomes) == list(range(10))
    assert {o.reason for o in outcomes if o.outcome == 'dropped'} <= {'shutdown'}


class Hiccups:
    """
    Fault injection: a few stage runs end much later than the rest (the worker preempted).

    On a busy machine (issue 13's soak: 2.5-4.7 % late at 3x) a stage of about 1 ms now
    and then took 10-20 ms; under overload EDF starts first stages with just their planned
    time left, so every such run was a late answer. A seeded share of runs sleeps
    ``hiccup_s`` after the real stage: too rare for the stage-time percentile to see.
    """

    def __init__(self, net, share: float, seed: int = 13) -> None:
        self.real = net.run_stage
        self.share = share
        self.hiccup_s = 0.0
        self.rng = np.random.default_rng(seed)
        net.run_stage = self.run_stage

    def run_stage(self, k, state):
        out = self.real(k, state)
        if self.hiccup_s and self.rng.random() < self.share:
            time.sleep(self.hiccup_s)
        return out


@pytest.mark.slow
def test_late_share_stays_low_at_3x_overload_with_stage_hiccups_and_a_busy_thread(images):
    """
    Issue 13 item 1: late <= 1 % at 3x overload, deadline relative to the measured times.

    The executor as the node configures it; the deadline is 10x the measured full-depth
    time (the node: 50 ms against 4-5 ms); frames at 3x the measured capacity from two
    streams; another thread of the process keeps the CPU and the GIL busy (the node's
    callback thread converting frames); 1.5 % of stage runs take 8x the full-depth time
    longer. Before the deadline guard and the start check about 2-3 % were late. The
    executor must not trade lateness for drops: most frames are still answered on time.
    """
    seconds = 10.0
    ex, outcomes = make_executor()
    hiccups = Hiccups(ex.net, share=0.015)
    ex.start()
    stop = threading.Event()
    try:
        for i in range(60):                       # light load: measured stage times
            submit_one(ex, images[i], -1)
            time.sleep(0.01)
        assert wait_for(lambda: len(outcomes) == 60)
        full = ex.num_stages * float(np.median(list(ex.stage_s)))
        deadline = 10 * full
        hiccups.hiccup_s = 8 * full
        rate = 3.0 / full

        def busy() -> None:                       # Python work in slices, as a callback
            while not stop.is_set():
                end = time.perf_counter() + 0.0004
                while time.perf_counter() < end:
                    pass
                time.sleep(0.0002)
        contender = threading.Thread(target=busy, daemon=True)
        contender.start()
        # 10 s, not 6: the late count is a few dozen hiccup-hit first stages (batches of
        # them), so over 6 s its run-to-run spread alone crossed 1 % (stop 20: 0.34-1.4 %
        # late on this machine, mean ~0.8 %, the code of stop 19 alike).
        drive(ex, images, rate, deadline, [(seconds, None)], FaultyStages(ex.net),
              cameras=2)
    finally:
        stop.set()
        ex.stop()
    frames = [o for o in outcomes if o.job.meta != -1]
    n = len(frames)
    late = sum(o.outcome == 'late' for o in frames)
    on_time = sum(o.outcome == 'on_time' for o in frames)
    late_info = ex.lateness()
    summary = (f'{n} frames at {rate:.0f}/s, deadline {1000 * deadline:.1f} ms: on time '
               f'{on_time}, late {late}; {late_info}')
    assert n >= 0.5 * rate * seconds, summary     # the load was really offered
    assert late <= 0.01 * n, summary
    assert on_time >= 0.25 * n, summary       # not by dropping what could be answered
    assert late_info['guard_ms'] > 0, summary  # the overruns were measured


def _stall_lines_after_cold_first_runs(images, caplog, idle_s: float):
    """
    Start an executor, idle ``idle_s``, then 1.5 s of frames whose first runs are slow.

    The first runs take 3 ms more (12x a 0.25 ms stage), the rest none. Returns the stall
    lines this executor's threads logged (its worker, or its delivery thread, which
    records most stage runs): a stopped one of an earlier test may still be finishing a
    stage it was stalled in (stop() returns at its timeout).
    """
    ex, _ = make_executor()
    faults = FaultyStages(ex.net)
    rate = 1.0 / ex.profile.full_depth_mean()
    caplog.set_level('WARNING', logger='anytime_infer.executor')
    ex.start()
    mine = {ex._thread.ident, ex._deliverer.ident}
    try:
        time.sleep(idle_s)
        drive(ex, images, rate, DEADLINE, [(0.004, Fault(delay_s=0.003)), (1.5, None)], faults)
    finally:
        ex.stop()
        faults.remove()
    assert faults.runs.get(1, 0) > 100
    return [r.getMessage() for r in caplog.records
            if r.getMessage().startswith('stall') and r.thread in mine]


def test_a_slow_first_stage_run_is_no_stall(images, caplog):
    """
    A cold first run after start is not reported as a stall when the runs after it are normal.

    Met in ``bench-executor``: most runs began with 'stall: stage 1 takes 5-14x its
    calibrated time' and its 'stall over' within a second. The first stage run checked for
    a stall at once (the check's 0.5 s gate started open), on a median of one run.
    """
    stalls = _stall_lines_after_cold_first_runs(images, caplog, idle_s=0.0)
    assert stalls == [], stalls


def test_cold_first_runs_long_after_start_are_no_stall(images, caplog):
    """
    The node's case: frames come long after ``start()``; its first runs are cold.

    Met in ``make demo``: 'stall: stage 1 takes 6.4x its calibrated time' and its 'stall
    over' at the start of a run that kept every frame on time. The node starts the
    executor at activation; the first frames come seconds later, so the first stall check
    came at the first stage run and judged that one cold run.
    """
    stalls = _stall_lines_after_cold_first_runs(images, caplog, idle_s=0.7)   # no frames yet
    assert stalls == [], stalls


def test_cold_first_runs_after_start_do_not_shrink_the_plans(images):
    """
    The first runs of each stage after start() take 40 ms (cold; ~37 ms was measured).

    A burst of frames with long deadlines, right after start, still runs at full depth:
    those runs are not planned with. Met as a flaky light-load test (3 of 20 frames at
    full depth): one cold run made every stage plan at up to 34x its calibrated time.
    """
    ex, outcomes = make_executor()
    real, seen = ex.net.run_stage, {}

    def cold_first(k, state):
        seen[k] = seen.get(k, 0) + 1
        if seen[k] <= COLD_RUNS:
            time.sleep(0.04)
        return real(k, state)
    ex.net.run_stage = cold_first
    ex.start()
    n = 20
    try:
        for i in range(n):
            submit_one(ex, images[i], i, deadline=1.0)
        assert wait_for(lambda: len(outcomes) == n)
    finally:
        ex.stop()
    assert [o.outcome for o in outcomes] == ['on_time'] * n
    assert [o.results[0].depth for o in outcomes] == [ex.num_stages] * n
    assert ex.guard_s < 0.01


def test_warm_up_runs_every_stage_at_every_batch_size_it_may_run():
    """
    The first batched run pays a one-time set-up; ``warm_up`` (batch 1 only) left it to it.

    Met in stop 23 while a CI run loaded this machine: the first batched stage after
    start took 70-900 ms and a burst of 8 frames right after start came out late (60 ms
    deadlines, 2 of 3 fresh processes). Quiet, in fresh processes after the old warm-up:
    the first pass of the 4 stages at batch 2 took 37-49 ms in 2 of 4 processes against
    4-6 ms for the second; after this warm-up 4.8-5.7 ms, as the second. Timing makes a
    poor test on a shared machine (a burst test passed with the old code when quiet), so
    this checks the cause: every stage has run at every batch size it may run.
    """
    from anytime_infer.executor import WARM_BATCH
    from anytime_infer.scheduler import make_policy
    ex, _ = make_executor()
    assert WARM_BATCH >= make_policy('imprecise_dp', ex.profile).max_batch
    real, seen = ex.net.run_stage, set()

    def record(k, state):
        seen.add((k, len(state)))
        return real(k, state)
    ex.net.run_stage = record
    ex.warm_up(runs=1)
    assert seen == {(k, b) for k in range(1, ex.num_stages + 1)
                    for b in range(1, WARM_BATCH + 1)}
    ex2, _ = make_executor(batching=False)
    assert ex2.warm_batch == 1
