"""
The soak benchmark's machinery: its pure checks, and a short run through the real node.

The short run (12 s of traffic) checks the outputs' structure and the accounting
invariant at every sample; it is not the soak (``make soak`` runs 10 minutes, README).
"""
import json
import os

from anytime_infer.soak import accounting, AnswerCounter, evaluate, \
    full_depth_from_diagnostics, full_depth_from_status, markdown, proc_sample, run_soak, \
    SoakConfig
import pytest


def _sample(t, phase='run', rss=500.0, threads=20, fds=18, received=100, on_time=90,
            late=0, dropped=10, queue=0):
    x = {'t_s': t, 'phase': phase, 'rss_mb': rss, 'threads': threads, 'fds': fds,
         'received': received, 'on_time': on_time, 'late': late, 'dropped': dropped,
         'queue_length': queue}
    x['in_flight'], x['accounting_ok'] = accounting(x, 64)
    return x


def test_accounting_invariant():
    assert accounting({'received': 10, 'on_time': 5, 'late': 1, 'dropped': 2}, 64) == (2, True)
    assert accounting({'received': 10, 'on_time': 9, 'late': 1, 'dropped': 2}, 64) == (-2, False)
    assert accounting({'received': 100, 'on_time': 5, 'late': 0, 'dropped': 0}, 64) == \
        (95, False)


def test_targets_pass_and_fail_on_what_they_measure():
    good = [_sample(t, rss=500 + t / 100, received=100 * (t + 1), on_time=90 * (t + 1),
                    dropped=10 * (t + 1)) for t in range(0, 601, 10)]
    res = {t['name']: t for t in evaluate(good, 60.0, 64, duplicates=0)}
    assert all(t['ok'] for t in res.values()), res
    assert res['rss_growth_mb']['value'] == pytest.approx(5.4)
    leaking = [dict(s, rss_mb=500 + s['t_s'] / 20, threads=20 + s['t_s'] // 100)
               for s in good]
    res = {t['name']: t for t in evaluate(leaking, 60.0, 64, duplicates=1)}
    assert not res['rss_growth_mb']['ok'] and not res['threads_flat']['ok']
    assert res['fds_flat']['ok'] and not res['no_frame_answered_twice']['ok']
    late = good[:-1] + [_sample(600, received=1000, on_time=900, late=20, dropped=80)]
    assert not {t['name']: t for t in evaluate(late, 60.0, 64, 0)}['late_share']['ok']
    broken = good[:3] + [_sample(30, received=100, on_time=99, dropped=10)] + good[4:]
    assert not {t['name']: t for t in evaluate(broken, 60.0, 64, 0)}['accounting']['ok']
    frozen = good[:10] + [dict(s, on_time=good[9]['on_time'],
                               dropped=s['received'] - good[9]['on_time'])
                          for s in good[10:]]
    assert not {t['name']: t for t in evaluate(frozen, 60.0, 64, 0)}['on_time_keeps_growing'][
        'ok']


def test_answer_counter_finds_duplicates_and_forgets_old_frames():
    c = AnswerCounter(2, window_s=1.0)
    for k in range(100):
        c.add(0, k * 100_000_000, 'on_time')
        c.add(1, k * 100_000_000, 'dropped')
    c.add(1, 99 * 100_000_000, 'late', 61.5)
    snap = c.snapshot()
    assert c.late_latency_ms == [61.5]
    assert snap['answers'] == 201 and snap['duplicates'] == 1
    assert snap['answers_by_outcome'] == {'on_time': 100, 'late': 1, 'dropped': 100}
    assert max(len(s) for s in c.seen) <= 12


def test_capacity_from_the_node_reports():
    assert full_depth_from_diagnostics({'stage_ms_p50': '0.5'}, 4) == pytest.approx(0.002)
    assert full_depth_from_diagnostics({}, 4) is None
    hist = [(float(t), {'received': 40 * t, 'estimated_load': 0.4}) for t in range(8)]
    assert full_depth_from_status(hist) == pytest.approx(0.01)
    assert full_depth_from_status(hist[:3]) is None


def test_proc_sample_of_this_process():
    x = proc_sample(os.getpid())
    assert x['rss_mb'] > 10 and x['threads'] >= 1 and x['fds'] >= 3


@pytest.mark.slow
def test_short_soak_through_the_node(tmp_path):
    cfg = SoakConfig(duration_s=12.0, interval_s=3.0, out=str(tmp_path), calibration_s=4.0,
                     settle_s=3.0)
    result = run_soak(cfg, log=print)
    for name in ('soak.json', 'soak.md', 'soak.png', 'node.log'):
        assert os.path.getsize(tmp_path / name) > 0, name
    with open(tmp_path / 'soak.json') as f:
        saved = json.load(f)
    assert saved['summary'] == json.loads(json.dumps(result['summary']))
    samples = saved['samples']
    assert [s['phase'] for s in samples] == ['run'] * 5 + ['settle']
    for s in samples:
        assert s['received'] == s['on_time'] + s['late'] + s['dropped'] + s['in_flight'], s
        assert 0 <= s['in_flight'] <= saved['summary']['queue_bound'], s
        assert s['rss_mb'] > 0 and s['threads'] > 0 and s['fds'] > 0
    assert samples[-1]['received'] > samples[0]['received'] > 0
    assert samples[-1]['sent'] > 0
    last = samples[-1]
    # After the cameras stopped, every frame the node received was answered, once.
    assert last['in_flight'] == 0 and last['answers'] == last['received'], last
    assert saved['summary']['duplicates'] == 0
    assert set(saved['summary']['late_latency_ms']) == {'p50', 'p99', 'max'}
    assert saved['summary']['node_exit_code'] == 0
    assert {t['name'] for t in saved['targets']} == {
        'node_alive', 'rss_growth_mb', 'threads_flat', 'fds_flat', 'accounting',
        'no_frame_answered_twice',
        'late_share', 'on_time_keeps_growing'}
    assert {t['name']: t['ok'] for t in saved['targets']}['accounting']
    md = markdown(saved)
    assert '| accounting | PASS |' in md and 'camera player reached' in md
    print(md)
