"""Fleet evaluation: many bags on a local Ray, identical to a sequential run; faults; restart."""
import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from anytime_infer.cli import main
from bag_helpers import foreign_mcap
import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    """day1/a (mcap, 2 x 15 frames), day1/b (sqlite3, png, 1 x 10), foreign.mcap (12)."""
    root = tmp_path_factory.mktemp('fleet')
    assert main(['make-bag', '--out', str(root / 'day1' / 'a'), '--frames', '15',
                 '--rate', '20', '--seed', '1']) == 0
    assert main(['make-bag', '--out', str(root / 'day1' / 'b'), '--frames', '10',
                 '--rate', '20', '--cameras', '1', '--storage', 'sqlite3', '--compressed',
                 '--seed', '2']) == 0
    foreign_mcap(str(root / 'foreign.mcap'))
    return root


def _summary(out):
    with open(os.path.join(out, 'summary.json')) as f:
        return json.load(f)


def _run_info(out):
    with open(os.path.join(out, 'run.json')) as f:
        return json.load(f)


def _ray_processes():
    """Return the PIDs of Ray's processes on this machine (daemons, agents, workers)."""
    pids = set()
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                cmd = f.read()
            with open(f'/proc/{pid}/stat') as f:
                zombie = f.read().rsplit(')', 1)[1].split()[0] == 'Z'
        except OSError:
            continue
        if not zombie and (b'gcs_server' in cmd or b'/raylet' in cmd or
                           cmd.startswith(b'ray::')):
            pids.add(pid)
    return pids


def _gone(before, timeout=30.0):
    """Wait until no Ray process is running that was not running before; return that."""
    end = time.monotonic() + timeout
    while _ray_processes() - before and time.monotonic() < end:
        time.sleep(0.2)
    return not _ray_processes() - before


def _same_tree(a, b, skip=('run.json',)):
    """Assert that two output folders hold the same files with the same bytes."""
    cmp = filecmp.dircmp(a, b)
    assert not cmp.left_only and not cmp.right_only, (cmp.left_only, cmp.right_only)
    for name in cmp.common_files:
        if name not in skip:
            assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False), \
                f'{a}/{name} differs'
    for sub in cmp.common_dirs:
        _same_tree(os.path.join(a, sub), os.path.join(b, sub), skip)


def test_ray_with_two_workers_gives_what_a_sequential_run_gives(fleet, tmp_path):
    ray_out, seq_out = str(tmp_path / 'ray'), str(tmp_path / 'seq')
    common = ['--compare', 'imprecise_dp,latest_full', '--deadline-ms', '60', '--seed', '4']
    before = _ray_processes()
    assert main(['evaluate', str(fleet), '--out', ray_out, '--workers', '2'] + common) == 0
    assert _gone(before)                     # ray.shutdown: nothing left running
    assert main(['evaluate', str(fleet), '--out', seq_out, '--sequential'] + common) == 0
    _same_tree(ray_out, seq_out)
    info = _run_info(ray_out)
    assert info['engine'] == 'ray' and info['workers'] == 2 and info['cluster_cpus'] == 2
    assert _run_info(seq_out)['engine'] == 'sequential'
    s = _summary(ray_out)
    assert s['bags_total'] == 3 and s['bags_failed'] == 0
    assert [b['name'] for b in s['bags']] == ['day1__a', 'day1__b', 'foreign.mcap']
    for pol in ('imprecise_dp', 'latest_full'):
        t = s['total'][pol]
        assert t['frames_in'] == 30 + 10 + 12 and t['bags'] == 3
        assert t['on_time'] + t['late'] + sum(t['dropped'].values()) == 52
        assert t['frames_with_ground_truth'] == 40 and 0.5 < t['accuracy'] <= 1.0
        from anytime_infer.replay.reports import read_frames
        lat = [r['latency_ms'] for name in ('day1__a', 'day1__b', 'foreign.mcap')
               for r in read_frames(os.path.join(ray_out, name, pol, 'frames.csv.gz'))
               if r['latency_ms'] is not None]
        for q in (50, 95, 99):   # merged histogram: within its 0.1 % bins of the exact
            exact = float(np.percentile(lat, q, method='inverted_cdf'))
            assert abs(t[f'latency_ms_p{q}'] - exact) <= 1e-3 * exact + 1e-3
        for name, frames in (('day1__a', 30), ('day1__b', 10), ('foreign.mcap', 12)):
            rep_path = os.path.join(ray_out, name, pol, 'report.json')
            with open(rep_path) as f:
                assert json.load(f)['total']['frames_in'] == frames
            from anytime_infer.replay.detections import read_detections
            dets = read_detections(os.path.join(ray_out, name, pol, 'detections.mcap'))
            assert len(dets) == frames
    by = {b['name']: b for b in s['bags']}
    assert by['foreign.mcap']['ground_truth'] is False
    assert by['foreign.mcap']['policies']['imprecise_dp']['accuracy'] is None
    md = open(os.path.join(ray_out, 'summary.md')).read()
    assert '| imprecise_dp | 3 | 52 |' in md and 'Policies per bag' in md
    assert os.path.getsize(os.path.join(ray_out, 'fleet.png')) > 10_000
    assert os.path.exists(os.path.join(ray_out, 'day1__a', 'compare.md'))


def _bad_bags(fleet, root):
    """Write a truncated copy, garbage bytes named .mcap, and a bag with no messages."""
    from anytime_infer.bagtypes import project_typestore
    from rosbags.rosbag2 import StoragePlugin, Writer
    shutil.copytree(fleet / 'day1' / 'a', root / 'truncated')
    mcap = next(p for p in (root / 'truncated').iterdir() if p.suffix == '.mcap')
    with open(mcap, 'r+b') as f:
        f.truncate(os.path.getsize(mcap) // 2)
    (root / 'corrupt.mcap').write_bytes(b'\x89MCAP0\r\n' + os.urandom(3000))
    with Writer(str(root / 'empty'), version=9, storage_plugin=StoragePlugin.MCAP) as w:
        w.add_connection('/cam/image_raw', 'sensor_msgs/msg/Image',
                         typestore=project_typestore())


def test_bad_bags_and_a_dying_worker_fail_alone(fleet, tmp_path):
    root = tmp_path / 'mixed'
    shutil.copytree(fleet / 'day1', root / 'good')
    _bad_bags(fleet, root)
    out, log = str(tmp_path / 'out'), str(tmp_path / 'kills.log')
    os.environ['ANYTIME_INFER_FLEET_KILL'] = 'good__b'   # test hook: that bag's worker dies
    os.environ['ANYTIME_INFER_FLEET_KILL_LOG'] = log
    try:
        status = main(['evaluate', str(root), '--out', out, '--workers', '2',
                       '--no-progress'])
    finally:
        del os.environ['ANYTIME_INFER_FLEET_KILL'], os.environ['ANYTIME_INFER_FLEET_KILL_LOG']
    assert status == 3
    s = _summary(out)
    by = {b['name']: b for b in s['bags']}
    assert set(by) == {'corrupt.mcap', 'empty', 'good__a', 'good__b', 'truncated'}
    assert s['bags_ok'] == 1 and by['good__a']['ok']
    assert sorted(s['failed']) == ['corrupt.mcap', 'empty', 'good__b', 'truncated']
    assert s['worst_first'][-1] == 'good__a'
    assert 'not a readable rosbag2 bag' in by['corrupt.mcap']['errors'][0]
    assert 'hold no messages' in by['empty']['errors'][0]
    # Cut in half, the mcap loses its summary and end magic: rosbags refuses to open it.
    assert 'truncated: not a readable rosbag2 bag' in by['truncated']['errors'][0]
    assert 'WorkerCrashedError' in by['good__b']['errors'][0]
    with open(log) as f:   # tried twice, in two worker processes
        tries = [line.split() for line in f]
    assert len(tries) == 2 and {t[0] for t in tries} == {'good__b'} and tries[0] != tries[1]
    assert s['total']['imprecise_dp']['frames_in'] == 30 and s['total']['imprecise_dp'][
        'bags'] == 1                                     # totals: complete bags only
    md = open(os.path.join(out, 'summary.md')).read()
    assert '## Failed bags' in md and 'WorkerCrashedError' in md
    assert not [e for e in os.listdir(out) if '.tmp-' in e]


def test_a_killed_run_restarted_skips_finished_bags(fleet, tmp_path):
    root = tmp_path / 'drives'
    for i in range(3):
        shutil.copytree(fleet / 'day1' / 'a', root / f'drive{i}')
    out = str(tmp_path / 'out')
    before = _ray_processes()
    cmd = [sys.executable, '-m', 'anytime_infer.cli', 'evaluate', str(root), '--out', out,
           '--workers', '2', '--no-progress']
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    end = time.monotonic() + 180

    def finished():
        return sorted(d for d in os.listdir(out) if os.path.exists(
            os.path.join(out, d, 'job.json'))) if os.path.isdir(out) else []
    while not finished() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)          # the driver only, as a scheduler stops a job
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert _gone(before)                      # Ray shut down on the way out
    done = finished()
    assert done and len(done) < 3 and not os.path.exists(os.path.join(out, 'summary.json'))
    stamps = {d: os.stat(os.path.join(out, d, 'job.json')).st_mtime_ns for d in done}
    assert main(['evaluate', str(root), '--out', out, '--sequential', '--no-progress']) == 0
    info = _run_info(out)
    assert info['skipped'] == done and sorted(info['evaluated'] + done) == [
        f'drive{i}' for i in range(3)]
    assert all(os.stat(os.path.join(out, d, 'job.json')).st_mtime_ns == stamps[d]
               for d in done)                       # finished bags were not touched
    assert not [e for e in os.listdir(out) if '.tmp-' in e]
    assert _summary(out)['bags_ok'] == 3
    fresh = str(tmp_path / 'fresh')
    assert main(['evaluate', str(root), '--out', fresh, '--sequential', '--no-progress']) == 0
    _same_tree(out, fresh)
    assert main(['evaluate', str(root), '--out', out, '--sequential', '--no-progress',
                 '--force']) == 0
    assert _run_info(out)['skipped'] == [] and len(_run_info(out)['evaluated']) == 3
    # Other settings are not "done": the bags are evaluated again with them.
    assert main(['evaluate', str(root), '--out', out, '--sequential', '--no-progress',
                 '--seed', '9']) == 0
    assert _run_info(out)['skipped'] == []
