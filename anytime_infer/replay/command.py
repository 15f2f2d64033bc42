"""
Replay of one bag, once per policy: what ``replay`` writes, and ``evaluate`` per bag.

Into ``out_dir`` (or ``out_dir/<policy>/`` with ``compare``): ``report.json``,
``report.md``, ``frames.csv.gz``, ``replay.png`` and ``detections.mcap`` (with the
rosbag2 folder ``detections/``); with ``compare`` also ``out_dir/compare.md``.
"""
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from anytime_infer.replay.bags import BagError, read_bag
from anytime_infer.replay.detections import write_detections
from anytime_infer.replay.reports import report_markdown, write_error_report, write_outputs

UNREADABLE, INCOMPLETE = 2, 3   # exit statuses


def replay(bag: str, out_dir: str, model: str = 'fashion_mnist', policy: str = 'imprecise_dp',
           compare: Optional[List[str]] = None, topics: Optional[Sequence[str]] = None,
           rate: float = 1.0, deterministic: bool = False, deadline_ms: float = 100.0,
           seed: int = 0, progress: Optional[Callable[[int, Optional[int]], None]] = None,
           quiet: bool = False) -> Tuple[int, List[Dict]]:
    """Replay a bag once per policy; write the outputs; return (exit status, reports)."""
    from anytime_infer.replay.deterministic import decide, run_model
    mode = 'deterministic' if deterministic else 'dds'
    try:
        if deterministic:
            run = run_model(bag, model, topics, progress)
        else:
            contents = read_bag(bag, topics)
    except BagError as e:
        write_error_report(out_dir, bag, mode, policy, str(e))
        if not quiet:
            print(f'anytime-infer replay: error: {e}', file=sys.stderr)
        return UNREADABLE, [{'bag': os.path.abspath(bag), 'complete': False,
                             'errors': [str(e)], 'mode': mode, 'policy': policy}]
    reps = []
    for pol in (compare or [policy]):
        sub = out_dir if not compare else os.path.join(out_dir, pol)
        os.makedirs(sub, exist_ok=True)
        if deterministic:
            rep, rows, record = decide(run, pol, deadline_ms, seed, rate)
        else:
            from anytime_infer.replay.dds import evaluate_dds
            rep, rows, record = evaluate_dds(bag, contents, model, pol, deadline_ms, rate,
                                             progress=progress)
        write_detections(os.path.join(sub, 'detections.mcap'), record)
        write_outputs(sub, rep, rows)
        reps.append(rep)
    if compare:
        with open(os.path.join(out_dir, 'compare.md'), 'w') as f:
            f.write(report_markdown(reps))
    status = 0 if all(r['complete'] for r in reps) else INCOMPLETE
    return status, reps
