"""`anytime-infer bench --policy-table`, on a trace of a model the project has not seen."""
import json
import os
import subprocess
import sys

from anytime_infer.scheduler.traces import write_trace
import numpy as np
from sched_helpers import synthetic_trace


def test_policy_table_runs_on_a_foreign_trace(tmp_path):
    t = synthetic_trace(n=600, exits=3, seed=5)
    path = str(tmp_path / 'other.csv.gz')
    write_trace(path, t.samples, np.array(['a'] * len(t.samples)),
                np.where(t.correct, 'a', 'b'), t.confidence)
    out = str(tmp_path / 'out')
    p = subprocess.run([sys.executable, '-m', 'anytime_infer.cli', 'bench', '--policy-table',
                        '--trace', path, '--stage-ms', '0.2,0.5,0.9', '--loads', '2',
                        '--frames', '300', '--out', out],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert '**other.csv.gz, stage times 0.2, 0.5, 0.9 ms**' in p.stdout
    rows = json.load(open(os.path.join(out, 'policy_table.json')))
    assert len(rows) == 1 and rows[0]['load'] == 2.0
    r = rows[0]
    # The oracle knows more than confidences can tell; every policy is an accuracy.
    assert r['oracle'] >= r['bound (confidences)'] - 0.05
    for col in ('dp (thread)', 'dp (inline)', 'dp free', 'greedy', 'best static'):
        assert 0.0 < r[col] <= 1.0, (col, r)
    bad = subprocess.run([sys.executable, '-m', 'anytime_infer.cli', 'bench', '--policy-table',
                          '--trace', path, '--out', out], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and '--stage-ms' in bad.stderr
