"""The off-path planner: contingent plans, the worker's boundary, the simulator's model."""
import json
import threading
from typing import Dict

from anytime_infer.scheduler import make_policy, Task
from anytime_infer.scheduler.planner import contingent_entry, decides_on_slots, \
    expected_time, heap_smallest, InlineLink, OffPathPlanner
from anytime_infer.scheduler.policies import ImpreciseDP
from anytime_infer.scheduler.simulator import make_streams, simulate
from anytime_infer.scheduler.timing import StageTimes
import numpy as np
import pytest
from sched_helpers import synthetic_profile, synthetic_trace


def _tasks(rng, n, front_done=1):
    """Make a loaded state: deadlines a stage apart, some results, front with a result."""
    out = []
    for i in range(n):
        t = Task(i, i % 4, 0.0, 0.0012 + 0.0009 * i + float(rng.uniform(0, 0.0004)), 4)
        t.stages_done = front_done if i == 0 else int(rng.integers(0, 3))
        t.confidences = [float(rng.random()) for _ in range(t.stages_done)]
        out.append(t)
    return out


@pytest.mark.parametrize('seed', range(12))
def test_every_outcome_gets_exactly_the_dps_plan(seed):
    rng = np.random.default_rng(seed)
    prof = synthetic_profile()
    tasks = _tasks(rng, int(rng.integers(2, 12)), front_done=int(rng.integers(1, 4)))
    x = tasks[0]
    start = 0.0
    pol = ImpreciseDP(prof, StageTimes(prof))
    _, chosen, _, _ = pol._prelude(start, tasks)
    assert chosen[0] is x
    entry = contingent_entry(pol, start, chosen, x, x.stages_done)
    edges = pol.utility.edges[x.stages_done - 1]
    assert len(entry.rows) == len(edges) - 1
    for b, row in enumerate(entry.rows):
        x.confidences[-1] = 0.5 * (edges[b] + min(edges[b + 1], 1.0))
        ref = ImpreciseDP(prof, StageTimes(prof))          # no cache shared with the plan
        _, ref_chosen, _, _ = ref._prelude(start, tasks)
        depth, _, _ = ref.plan_depths(start, ref_chosen)
        assert row.want == depth, f'bin {b}'
        assert entry.row(x.confidences[-1]) is row


def _weighted_tasks(rng, most):
    """Make 1..most-1 loaded tasks (front with 0-2 stages done) with camera weights."""
    tasks = _tasks(rng, int(rng.integers(1, most)), front_done=int(rng.integers(0, 3)))
    for t in tasks:
        t.weight = float(rng.choice([1.0, 0.5, 2.0]))
    return tasks


def _link(prof, tasks):
    pol = ImpreciseDP(prof, StageTimes(prof), batching=False)
    link = OffPathPlanner(pol)
    for t in tasks:
        link.arrived(t)
    return pol, link


def test_a_fresh_plan_gives_the_inline_dps_decision():
    prof = synthetic_profile()
    agree = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        tasks = _tasks(rng, 8)
        by_id = {t.task_id: t for t in tasks}
        pol, link = _link(prof, tasks)
        front = tasks[0]
        stage = front.stages_done + 1
        link.plan(link.stage_start(0.0, [front.task_id], stage))
        front.stages_done, conf = stage, float(rng.random())
        front.confidences.append(conf)
        link.stage_done(front.task_id, stage, conf)
        now = expected_time(pol.times, stage)      # the stage ended when expected
        dec = link.decide(now, by_id, [front.task_id])
        st = link.stats
        assert st.mandatory + st.exact + st.fallback == st.boundaries
        inline = ImpreciseDP(prof, StageTimes(prof), batching=False, lazy=False)
        ref = inline.decide(now, tasks)
        if link.stats.exact:
            assert dec.run == ref.run
            assert front.task_id in dec.finish if front.task_id in ref.finish else True
            agree += 1
    assert agree >= 15, 'fresh plans were not used'


def test_a_frame_that_arrived_during_the_stage_is_not_starved():
    prof = synthetic_profile()
    rng = np.random.default_rng(3)
    tasks = _tasks(rng, 1, front_done=1)
    tasks[0].deadline = 0.02                         # room to go to full depth
    by_id = {t.task_id: t for t in tasks}
    pol, link = _link(prof, tasks)
    front = tasks[0]
    link.plan(link.stage_start(0.0, [0], 2))
    front.stages_done, front.confidences = 2, front.confidences + [0.2]
    link.stage_done(0, 2, 0.2)
    # A frame arrived during the stage: its mandatory stage fits only if it runs next.
    now = pol.times.plan(2)
    late = Task(1, 1, now, now + pol.times.plan(1) * 1.5, 4)
    by_id[1] = late
    link.arrived(late)
    dec = link.decide(now, by_id, [0])
    assert dec.run == [1], 'the plan ignored a frame whose mandatory stage had to run now'


def test_the_planner_reads_only_what_was_posted_before_the_stage_started():
    prof = synthetic_profile()
    rng = np.random.default_rng(5)
    tasks = _tasks(rng, 4)
    pol, link = _link(prof, tasks)
    seq = link.stage_start(0.0, [0], tasks[0].stages_done + 1)
    # After the stage started: a result and an arrival the planner must not see.
    link.stage_done(0, tasks[0].stages_done + 1, 0.9)
    link.arrived(Task(99, 0, 0.0, 0.01, 4))
    plan = link.plan(seq)
    assert plan is not None and 99 not in link._mirror
    assert len(link._mirror.task(0).confidences) == tasks[0].stages_done
    assert link._mirror.task(0).stages_done == tasks[0].stages_done


def test_a_planner_thread_hands_plans_to_the_worker():
    prof = synthetic_profile()
    rng = np.random.default_rng(7)
    tasks = _tasks(rng, 6)
    pol, link = _link(prof, tasks)
    stop = threading.Event()

    def planner():
        while not stop.is_set():
            seq = link.wait_for_stage(0.05)
            if seq is not None:
                link.plan(seq)
    th = threading.Thread(target=planner, daemon=True)
    th.start()
    try:
        seq = link.stage_start(0.0, [0], tasks[0].stages_done + 1)
        for _ in range(200):
            if link.ready is not None and link.ready.seq == seq:
                break
            stop.wait(0.01)
        assert link.ready is not None and link.ready.seq == seq
    finally:
        stop.set()
        th.join(2.0)


class _Counting(dict):
    """A task map that counts lookups (the worker's boundary must not scan it)."""

    reads = 0

    def get(self, key, default=None):
        _Counting.reads += 1
        return super().get(key, default)


def test_the_boundary_does_not_scan_the_pending_tasks():
    prof = synthetic_profile()
    reads = {}
    for n in (16, 256):
        rng = np.random.default_rng(n)
        tasks = _tasks(rng, n)
        by_id: Dict[int, Task] = _Counting((t.task_id, t) for t in tasks)
        pol, link = _link(prof, tasks)
        front = tasks[0]
        link.plan(link.stage_start(0.0, [0], front.stages_done + 1))
        link.decide(pol.times.plan(1), by_id, [0])           # adopts: folds arrivals in
        front.stages_done += 1
        front.confidences.append(0.3)
        link.plan(link.stage_start(0.0, [0], front.stages_done + 1))
        front.stages_done += 1
        front.confidences.append(0.3)
        _Counting.reads = 0
        link.decide(2 * pol.times.plan(2), by_id, [0])
        reads[n] = _Counting.reads
    assert reads[256] <= reads[16] + 8, reads


def test_heap_smallest_is_the_sorted_prefix():
    import heapq
    rng = np.random.default_rng(0)
    for n in (0, 1, 5, 100):
        h = [(float(x), i) for i, x in enumerate(rng.random(n))]
        heapq.heapify(h)
        for k in (1, 3, 8):
            assert heap_smallest(h, k) == sorted(h)[:k]


@pytest.mark.parametrize('planner', ['thread', 'inline'])
def test_simulated_planner_gives_every_frame_one_outcome(planner):
    prof = synthetic_profile(stage_ms=(0.06, 0.2, 0.2, 0.2))
    trace = synthetic_trace()
    pol = make_policy('imprecise_dp', prof)
    res = simulate(prof, trace, pol, make_streams(prof, 2.5), frames=600, seed=2,
                   planner=planner)
    s = res.summary()
    assert s['on_time'] + s['late'] + s['dropped'] == 600
    assert s['planner'] == planner
    if planner == 'thread':
        assert s['plans'] > 0 and s['boundary_mandatory'] + s['boundary_exact'] + \
            s['boundary_stale'] + s['boundary_fallback'] == pytest.approx(1.0)
        assert s['miss_rate'] <= 0.02


def test_the_oracle_is_at_least_every_online_policy():
    prof = synthetic_profile(stage_ms=(0.06, 0.2, 0.2, 0.2))
    trace = synthetic_trace()
    streams = make_streams(prof, 3.0)
    acc = {}
    for name in ('oracle', 'imprecise_dp', 'imprecise_dp_flat', 'greedy'):
        acc[name] = simulate(prof, trace, make_policy(name, prof), streams, frames=300,
                             seed=4, charge_decisions=False).summary()['accuracy']
    assert acc['oracle'] >= max(acc.values())


def test_the_free_bound_plans_for_no_decision_time_and_repeats_exactly():
    # The bound (decisions free) used to plan every stage with the policy's own measured
    # decision time: it depended on how busy the machine was and was weaker than free.
    prof = synthetic_profile(stage_ms=(0.06, 0.2, 0.2, 0.2))
    trace = synthetic_trace()
    streams = make_streams(prof, 3.0)
    runs = []
    for _ in range(2):
        pol = make_policy('imprecise_dp', prof)
        res = simulate(prof, trace, pol, streams, frames=400, seed=4, charge_decisions=False)
        assert pol.times.overhead == 0.0 and pol._decision_s == 0.0
        runs.append([(f.outcome, f.depth) for f in res.frames])
    assert runs[0] == runs[1]
    charged = make_policy('imprecise_dp', prof)
    simulate(prof, trace, charged, streams, frames=400, seed=4, planner='inline')
    assert charged.times.overhead > 0.0          # a charged run plans for its decisions


def test_the_simulated_inline_worker_decides_on_slot_arrays_as_the_executor(monkeypatch):
    # The executor decides inline on an InlineLink's slot arrays, posted as tasks come,
    # run and go; the simulator read every pending task at each boundary instead, a
    # costlier path than the one it models (a cut of fashion_mnist with a heavy stage 1,
    # CPU times, 3x: a decision's p50 0.032 ms then, 0.014 ms on the link). With every
    # decision timed at 0 s, both paths give every frame the same outcome and depth.
    from anytime_infer.scheduler import simulator
    prof = synthetic_profile(stage_ms=(0.06, 0.2, 0.2, 0.2))
    trace = synthetic_trace()
    streams = make_streams(prof, 2.5)
    monkeypatch.setitem(simulator.CLOCKS, 'cpu', lambda: 0.0)
    boundaries = []
    real = InlineLink.boundary

    def counted(self, *args, **kw):
        boundaries.append(1)
        return real(self, *args, **kw)
    monkeypatch.setattr(InlineLink, 'boundary', counted)

    def run(name: str, frames: int = 500):
        pol = make_policy(name, prof)
        pol.clock = lambda: 0.0           # the policy's own decision time: 0 s too
        res = simulate(prof, trace, pol, streams, frames=frames, seed=3, planner='inline')
        assert res.summary()['planner'] == 'inline'
        return [(f.outcome, f.depth) for f in res.frames]
    on_link = run('imprecise_dp')
    assert len(boundaries) > 500
    n = len(boundaries)
    monkeypatch.setattr(simulator, 'decides_on_slots', lambda policy: False)
    assert run('imprecise_dp') == on_link and len(boundaries) == n
    monkeypatch.undo()
    # Only the DP's own decision runs on the arrays: greedy inherits ``decide_slots``
    # from it, and the oracle has no arrays.
    assert decides_on_slots(make_policy('imprecise_dp_flat', prof))
    assert not decides_on_slots(make_policy('greedy', prof))
    assert not decides_on_slots(make_policy('oracle', prof))


def test_simulate_cli_takes_the_planner_options(capsys, tmp_path):
    from anytime_infer.cli import main
    from anytime_infer.scheduler.traces import write_trace
    trace = synthetic_trace(n=400)
    path = str(tmp_path / 't.csv')
    labels = np.zeros(400, dtype=int)
    pred = np.where(trace.correct, 0, 1)
    write_trace(path, trace.samples, labels, pred, trace.confidence)
    for extra in (['--planner', 'inline', '--decision-clock', 'wall'], []):
        assert main(['simulate', '--trace', path, '--stage-ms', '0.05,0.2,0.2,0.2',
                     '--frames', '300', '--load', '2', '--json', *extra]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out['frames'] == 300 and 0.0 <= out['accuracy'] <= 1.0
        assert out['planner'] in (('inline',) if extra else ('inline', 'thread'))


def test_the_planner_mode_follows_the_measured_cost_of_a_decision():
    from anytime_infer.scheduler.planner import choose_planner
    fast = choose_planner(synthetic_profile(stage_ms=(0.001, 0.001, 0.001, 0.001)))
    slow = choose_planner(synthetic_profile(stage_ms=(50.0, 50.0, 50.0, 50.0)))
    assert fast[0] == 'thread' and fast[1] > 1.0
    assert slow[0] == 'inline' and slow[1] < 0.5


@pytest.mark.parametrize('flat', [False, True])
def test_the_compiled_planner_makes_the_same_plan_as_the_reference(flat):
    from anytime_infer.scheduler.planner import Mirror, prepare, prepare_arrays
    prof = synthetic_profile()
    modes = set()
    for seed in range(60):
        rng = np.random.default_rng(1000 + seed)
        tasks = _weighted_tasks(rng, 14)
        pol = ImpreciseDP(prof, StageTimes(prof), flat=flat)
        mirror = Mirror(capacity=4)          # grows as tasks come
        for t in tasks:
            mirror.add(t, t.stages_done, t.confidences)
        # Idle; the front's stage; a later task's stage (it is not the front after it);
        # a batch of two at the same stage.
        kind = seed % 4
        pick = [[], tasks[:1], tasks[-1:], [t for t in tasks if t.stages_done == 1][:2]][kind]
        running = [t.task_id for t in pick if t.stages_done < 4]
        stage = pick[0].stages_done + 1 if running else 0
        now = float(rng.uniform(0, 0.001))
        ref = prepare(pol, now, [mirror.task(i) for i in mirror.slot], running, stage)
        got = prepare_arrays(ImpreciseDP(prof, StageTimes(prof), flat=flat), now, mirror,
                             running, stage)
        assert got.first == ref.first
        (key, e_ref), = ref.entries.items()
        e_got = got.entries[key]
        assert e_got.edges == e_ref.edges and e_got.could_go_on == e_ref.could_go_on
        assert [(r.order, r.want, r.reserve, r.block, r.last) for r in e_got.rows] == \
            [(r.order, r.want, r.reserve, r.block, r.last) for r in e_ref.rows]
        assert got.table == ref.table
        modes.add((key[0] < 0, e_ref.edges is None))
    assert len(modes) >= (2 if flat else 3)


@pytest.mark.parametrize('flat,lazy,batching', [(False, True, True), (False, False, True),
                                                (True, True, False), (False, False, False)])
def test_the_compiled_inline_decision_is_the_reference_decision(flat, lazy, batching):
    import os
    from anytime_infer.scheduler.profiles import load_profile
    # The bundled fashion_mnist profile: calibrated batches that pay (batch mates compared).
    prof = load_profile(os.path.join(os.path.dirname(__file__), '..', 'anytime_infer',
                                     'models', 'fashion_mnist', 'profile.json'))
    kinds = set()
    for seed in range(80):
        rng = np.random.default_rng(2000 + seed)
        tasks = _weighted_tasks(rng, 40)
        for t in tasks:
            if rng.random() < 0.1:
                t.deadline = float(rng.uniform(0.0, 0.0005))   # some cannot make it
        rng.shuffle(tasks)
        now = float(rng.uniform(0, 0.0005))

        def fresh():
            return ImpreciseDP(prof, StageTimes(prof), flat=flat, lazy=lazy,
                               batching=batching)
        ref = fresh()._decide_py(now, tasks)
        got = fresh()._decide_arrays(now, tasks)
        # The inline link: slot arrays written as the worker posts (arrivals with less
        # progress, exits after, tasks removed in between so that slots are reused).
        link = InlineLink(fresh())
        for t in tasks:
            early = Task(t.task_id, t.stream, t.arrival, t.deadline, t.num_stages, t.weight)
            link.arrived(early)
            gone = Task(1000 + t.task_id, 0, 0.0, 0.001, 4)
            link.arrived(gone)
            if rng.random() < 0.5:
                link.removed(gone.task_id)
            for k, c in enumerate(t.confidences, start=1):
                link.stage_done(t.task_id, k, c)
        for t in tasks:
            link.removed(1000 + t.task_id)
        slots = link.decide(now, {t.task_id: t for t in tasks})
        for d in (got, slots):
            assert d.run == ref.run
            assert sorted(d.finish) == sorted(ref.finish)
            assert sorted(d.drop) == sorted(ref.drop)
            assert d.planned_depth == ref.planned_depth
        kinds.add((bool(ref.run), bool(ref.finish), bool(ref.drop), len(ref.run) > 1))
    assert len(kinds) >= 3
    assert any(k[3] for k in kinds) == batching        # batches were compared too


def test_the_planners_time_includes_replaying_the_workers_events(monkeypatch):
    # The simulator makes a plan usable at its start + planner_s: the replay of the
    # worker's events into the planner's copy is the planner's work too (it was left out).
    from anytime_infer.scheduler import planner as planner_mod
    ticks = [0.0]

    def clock() -> float:
        return ticks[0]
    real_add = planner_mod.Mirror.add

    def slow_add(self, *args) -> None:
        ticks[0] += 0.001          # each task replayed costs the planner 1 ms
        real_add(self, *args)
    monkeypatch.setattr(planner_mod.Mirror, 'add', slow_add)
    prof = synthetic_profile()
    tasks = _tasks(np.random.default_rng(5), 6)
    pol = ImpreciseDP(prof, StageTimes(prof), batching=False)
    link = OffPathPlanner(pol, clock)
    for t in tasks:
        link.arrived(t)
    plan = link.plan(link.stage_start(0.0, [tasks[0].task_id], tasks[0].stages_done + 1))
    assert plan is not None
    assert plan.planner_s >= 6 * 0.001 - 1e-12
