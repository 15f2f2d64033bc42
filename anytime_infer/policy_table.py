"""
Which policy wins where: one interleaved run of the policies, as README tables.

``anytime-infer bench --policy-table`` runs, for each bundled model, at its CPU stage
times (its profile) and at fast-accelerator stage times (``checks/planner``'s: CPU stage
times divided by a factor, ``FAST``), at loads 1x, 2x and 3x: ``imprecise_dp`` with its
decisions charged (planner thread, the default) and inline (one core), the same free of
decision cost (the bound), ``greedy``, every static depth and the oracle. The runs of one
(case, load) follow each other, so machine load drifts affect them alike.

``--trace T --stage-ms a,b,...`` runs the same table on a trace of another model (its
stage times on the user's device): which policy to pick for a model this project has not
seen. Each row also carries the budget bound of what confidences can buy
(``scheduler.bounds``: the larger of its ``last`` and ``history`` figures) beside the
oracle's; the simulated policies stay under it but for sampling noise.
"""
from typing import Dict, List, Sequence, Tuple

from anytime_infer.evaluation import bundled_source, run_policy, Source, trace_source

# The fast cases of ``checks/planner``: each model's CPU stage times as first calibrated
# (two torch threads; the bundled profiles are timed with the node's one thread since),
# divided by a factor. Fixed here so that the table's fast rows stay the check's cases.
FAST = {'fashion_mnist': ((0.189, 0.553, 0.447, 0.694), 5.0),
        'traffic_lights': ((1.047, 0.899, 1.246, 1.101), 15.0)}
COLUMNS = ('dp (thread)', 'dp (inline)', 'dp free', 'greedy', 'best static', 'oracle',
           'bound (confidences)')


def trace_case(path: str, stage_ms: Sequence[float], seed: int = 11) -> Tuple[str, Source]:
    """Return the case of a trace from elsewhere at the given mean stage times (ms)."""
    import os
    ms = ', '.join(f'{m:g}' for m in stage_ms)
    return f'{os.path.basename(path)}, stage times {ms} ms', trace_source(path, stage_ms, seed)


def bundled_cases(models: Sequence[str]) -> List[Tuple[str, Source]]:
    """Return each bundled model's cases: CPU stage times, and the fast ones (``FAST``)."""
    import os
    from anytime_infer.evaluation import TRACE_FILE
    from anytime_infer.model.store import resolve_model_dir
    out = []
    for m in models:
        src = bundled_source(m)
        out.append((f'{m}, CPU stage times', src))
        fast = FAST.get(m)
        if fast:
            base, factor = fast
            ms = [b / factor for b in base]
            path = os.path.join(resolve_model_dir(m), TRACE_FILE)
            out.append((f'{m}, stage times /{factor:g}', trace_source(path, ms, seed=11)))
    return out


def policy_rows(cases: Sequence[Tuple[str, Source]], loads: Sequence[float] = (1.0, 2.0, 3.0),
                frames: int = 2000, seed: int = 11, progress=None) -> List[Dict]:
    """Return one row per (case, load): every column's accuracy, misses, decision times."""
    import time
    from anytime_infer.scheduler.bounds import budget_bound, HISTORY_BINS
    from anytime_infer.scheduler.planner import choose_planner
    rows = []
    for label, src in cases:
        n = src.profile.num_stages
        stage_s = [src.profile.stage_mean(k) for k in range(1, n + 1)]
        auto, ratio = choose_planner(src.profile, time.thread_time)
        for load in loads:
            kw = {'frames': frames, 'seed': seed}
            thread = run_policy(src, 'imprecise_dp', load, planner='thread', **kw)
            inline = run_policy(src, 'imprecise_dp', load, planner='inline', **kw)
            free = run_policy(src, 'imprecise_dp', load, charge_decisions=False, **kw)
            greedy = run_policy(src, 'greedy', load, **kw)
            static = max((run_policy(src, 'fixed_depth', load, depth=k, **kw)
                          for k in range(1, n + 1)), key=lambda r: r['accuracy'])
            oracle = run_policy(src, 'oracle', load, charge_decisions=False, **kw)
            row = {'case': label, 'load': load, 'auto': auto, 'cost ratio': ratio,
                   'dp (thread)': thread['accuracy'], 'dp (inline)': inline['accuracy'],
                   'dp free': free['accuracy'], 'greedy': greedy['accuracy'],
                   'best static': static['accuracy'], 'static depth': static['policy'],
                   'oracle': oracle['accuracy'], 'oracle run': oracle.get('oracle_source'),
                   'bound (confidences)': max(
                       budget_bound(src.trace, stage_s, load, 'last').accuracy,
                       budget_bound(src.trace, stage_s, load, 'history',
                                    HISTORY_BINS).accuracy),
                   'dp miss': thread['miss_rate'],
                   'dp boundary ms p50': thread['decision_ms_p50'],
                   'inline decision ms p50': inline['decision_ms_p50'],
                   'greedy decision ms p50': greedy['decision_ms_p50'],
                   'planner ms p50': thread.get('planner_ms_p50', 0.0),
                   'mean stage ms': thread['mean_stage_ms']}
            rows.append(row)
            if progress:
                progress(row)
    return rows


def winner(row: Dict) -> str:
    """
    Return the best charged policy of a row (ties within 0.5 points listed together).

    The DP is counted in the mode ``--planner auto`` picks for the case.
    """
    charged = {'dp': row[f'dp ({row["auto"]})'], 'greedy': row['greedy'],
               'static': row['best static']}
    top = max(charged.values())
    return ' = '.join(k for k, v in charged.items() if v >= top - 0.005)


def policy_markdown(rows: List[Dict]) -> str:
    """Format the rows as one markdown table per case."""
    out = []
    for case in dict.fromkeys(r['case'] for r in rows):
        sub = [r for r in rows if r['case'] == case]
        out.append(f'**{case}** (mean stage {sub[0]["mean stage ms"]:.3f} ms; one inline '
                   f'decision {sub[0]["cost ratio"]:.2f} of it: `--planner auto` picks '
                   f'{sub[0]["auto"]})\n')
        out.append('| load | ' + ' | '.join(COLUMNS) + ' | dp miss | boundary / inline / '
                   'greedy decision p50 ms | planner p50 ms | wins (charged) |')
        out.append('|' + '---|' * (len(COLUMNS) + 5))
        for r in sub:
            cells = [f'{r[c]:.3f}' for c in COLUMNS]
            cells[COLUMNS.index('best static')] += f' ({r["static depth"]})'
            out.append(f'| {r["load"]:g}x | ' + ' | '.join(cells) +
                       f' | {100 * r["dp miss"]:.2f} % | {r["dp boundary ms p50"]:.3f} / '
                       f'{r["inline decision ms p50"]:.3f} / '
                       f'{r["greedy decision ms p50"]:.3f} | {r["planner ms p50"]:.3f} | '
                       f'{winner(r)} |')
        out.append('')
    return '\n'.join(out)
