"""Small synthetic profiles and traces for scheduler tests (no torch, no files)."""
from anytime_infer.scheduler.profiles import profile_from_dict, synthetic_latency
from anytime_infer.scheduler.traces import tables_from_trace, Trace
import numpy as np


def synthetic_trace(n: int = 2000, exits: int = 4, seed: int = 0) -> Trace:
    """Make exits that get better with depth; confidence tells of correctness."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n)
    base = np.linspace(0.55, 0.92, exits)
    p_ok = np.clip(base[None, :] + 0.35 * (0.5 - difficulty[:, None]), 0.02, 0.99)
    ok = rng.random((n, exits)) < p_ok
    conf = np.clip(p_ok + rng.normal(0, 0.05, (n, exits)), 0.1, 1.0)
    return Trace([str(i) for i in range(n)], conf, ok)


def synthetic_profile(stage_ms=(0.3, 1.0, 1.0, 1.0), trace: Trace = None):
    """Make a profile with lognormal stage times and tables from a synthetic trace."""
    trace = trace or synthetic_trace(exits=len(stage_ms))
    acc, edges, cond = tables_from_trace(trace)
    return profile_from_dict({'num_stages': len(stage_ms),
                              'latency': synthetic_latency(stage_ms),
                              'exit_accuracy': acc, 'conf_edges': edges,
                              'cond_accuracy': cond}, name='synthetic')
