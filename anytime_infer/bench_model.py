"""Model benchmark: per-stage latency and throughput per batch size, and peak memory."""
import resource
from typing import List

from anytime_infer.executor import pick_device
from anytime_infer.model.calibrate import measure_latency
from anytime_infer.model.store import load_model, resolve_model_dir
import torch


def bench_model(models: List[str], device: str = 'auto', batches=(1, 2, 4, 8, 16),
                runs: int = 100) -> str:
    """Measure every stage of every model; return a markdown report."""
    dev = pick_device(device)
    lines = [f'device: {dev} ({torch.get_num_threads()} threads, torch {torch.__version__})',
             '']
    for name in models:
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if dev.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(dev)
        net, card = load_model(resolve_model_dir(name), str(dev))
        pre = card['preprocess']
        lat = measure_latency(net, (pre['channels'], pre['height'], pre['width']), dev,
                              batches, runs, warmup_s=1.0)
        lines.append(f'### {name} ({card["arch"]}, {card["parameters"]} parameters, input '
                     f'{pre["channels"]}x{pre["height"]}x{pre["width"]})')
        lines.append('')
        lines.append('| stage | ' + ' | '.join(f'batch {b} p50 / p99 ms (img/s)'
                                               for b in batches) + ' |')
        lines.append('|---|' + '---|' * len(batches))
        for k, per in enumerate(lat, start=1):
            cells = [f'{per[str(b)]["p50_ms"]:.3f} / {per[str(b)]["p99_ms"]:.3f} '
                     f'({b / per[str(b)]["p50_ms"] * 1000:.0f})' for b in batches]
            lines.append(f'| {k} | ' + ' | '.join(cells) + ' |')
        full = [sum(per[str(b)]['p50_ms'] for per in lat) for b in batches]
        lines.append('| all | ' + ' | '.join(f'{f:.3f} ({b / f * 1000:.0f})'
                                             for f, b in zip(full, batches)) + ' |')
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        mem = f'peak RSS of this process {rss / 1024:.0f} MiB (+{(rss - rss0) / 1024:.0f} ' \
              f'MiB for this model)'
        if dev.type == 'cuda':
            mem += f', peak CUDA memory {torch.cuda.max_memory_allocated(dev) / 2**20:.1f} MiB'
        lines += ['', mem, '']
    return '\n'.join(lines)


def model_table(models: List[str]) -> str:
    """Build the README table: per exit test accuracy, CPU stage latency and ECE (from files)."""
    import json
    import os
    lines = ['| model | exit | test accuracy | stage p50 / p99 ms (batch 1) | '
             'ECE test (before -> after temperature) |', '|---|---|---|---|---|']
    for name in models:
        folder = resolve_model_dir(name)
        with open(os.path.join(folder, 'card.json')) as f:
            card = json.load(f)
        with open(os.path.join(folder, 'profile.json')) as f:
            prof = json.load(f)
        for k, acc in enumerate(card['test_accuracy']):
            lat = prof['latency'][k]['1']
            ece = card.get('test_ece', {})
            e = (f'{ece["before"][k]:.3f} -> {ece["after"][k]:.3f}' if ece else '')
            lines.append(f'| {name} | {k + 1} | {acc:.4f} | {lat["p50_ms"]:.3f} / '
                         f'{lat["p99_ms"]:.3f} | {e} |')
    return '\n'.join(lines)
