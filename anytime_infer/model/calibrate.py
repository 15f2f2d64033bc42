"""
Calibration on the device in use: stage latencies and exit confidence tables.

Latency: every stage at batch sizes 1, 2, 4, 8, ... after warm-up, timed with CUDA
synchronisation on a GPU and a monotonic clock on the CPU; p50/p95/p99, mean and the
quantiles the simulator samples from. Confidence: per exit, temperature scaling fitted on
the validation split (never the test split), the expected calibration error (ECE) before
and after, and P(exit l correct | confidence bin of exit k) for every k <= l.
"""
import os
import platform
import time
from typing import Dict, List, Sequence, Tuple

from anytime_infer.model.data import load_dataset, to_tensor_batch
from anytime_infer.model.store import CARD, load_model, PROFILE, read_json, write_json
from anytime_infer.model.train import exit_predictions
from anytime_infer.scheduler.profiles import QUANTILE_LEVELS
from anytime_infer.scheduler.traces import conditional_edges, smoothed_bin_rates
import numpy as np
import torch


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood at a temperature."""
    p = softmax(logits, temperature)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, low: float = 0.25,
                    high: float = 8.0) -> float:
    """
    Fit the temperature minimising the NLL (golden-section search on log T).

    T is kept within [low, high]: an exit that is right on every validation sample (the
    small traffic-light set) would otherwise be sharpened without bound.
    """
    lo, hi = np.log(low), np.log(high)
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2))


def ece(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Compute the expected calibration error (equal-width confidence bins)."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(total)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on the CPU)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(net, shape: Sequence[int], device: torch.device,
                    batches: Sequence[int] = (1, 2, 4, 8), runs: int = 200,
                    warmup_s: float = 2.0) -> List[Dict[str, Dict]]:
    """
    Latency statistics (ms) of every stage at every batch size.

    The whole network is first run for ``warmup_s`` at every batch size (thread pools,
    allocator and kernel selection settle); then the stages are timed round-robin, one run
    of each (stage, batch) per round, so that slow drifts of the machine spread over all
    of them instead of biasing whichever was measured first.
    """
    inputs = {}
    for b in batches:
        states = [torch.randn(b, *shape, device=device)]
        for k in range(1, net.num_stages + 1):
            states.append(net.run_stage(k, states[-1])[0])
        inputs[b] = states
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        for b in batches:
            net(inputs[b][0])
    sync(device)
    samples: Dict[tuple, List[float]] = {(k, b): [] for k in range(1, net.num_stages + 1)
                                         for b in batches}
    for _ in range(runs):
        for (k, b), acc in samples.items():
            inp = inputs[b][k - 1]
            t0 = time.perf_counter()
            net.run_stage(k, inp)
            sync(device)
            acc.append((time.perf_counter() - t0) * 1000.0)
    out: List[Dict[str, Dict]] = [{} for _ in range(net.num_stages)]
    for (k, b), acc in samples.items():
        s = np.array(acc)
        out[k - 1][str(b)] = {
            'p50_ms': float(np.percentile(s, 50)), 'p95_ms': float(np.percentile(s, 95)),
            'p99_ms': float(np.percentile(s, 99)), 'mean_ms': float(s.mean()),
            'quantiles_ms': [float(q) for q in np.quantile(s, QUANTILE_LEVELS)],
            'runs': int(len(s))}
    return out


def confidence_tables(logits: List[np.ndarray], labels: np.ndarray, temps: List[float],
                      bins: int = 10) -> Dict:
    """Exit accuracy, confidence bin edges and P(exit l ok | bin of exit k) on a split."""
    conf = [softmax(lg, t).max(axis=1) for lg, t in zip(logits, temps)]
    ok = [lg.argmax(axis=1) == labels for lg in logits]
    n = len(logits)
    acc = [float(o.mean()) for o in ok]
    edges_all, cond_all, counts_all = [], [], []
    for k in range(n):
        edges = conditional_edges(conf[k], bins)
        b = np.clip(np.searchsorted(edges, conf[k], side='right') - 1, 0, len(edges) - 2)
        cond_all.append([smoothed_bin_rates(ok[lvl], b, len(edges) - 1, acc[lvl])
                         if lvl >= k else [] for lvl in range(n)])
        edges_all.append([float(e) for e in edges])
        counts_all.append([int(c) for c in np.bincount(b, minlength=len(edges) - 1)])
    return {'exit_accuracy': acc, 'conf_edges': edges_all, 'cond_accuracy': cond_all,
            'conf_bin_counts': counts_all}


NODE_THREADS = 1      # the node's default ``torch_threads`` (config/anytime_infer.yaml)


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads in torch (0: torch's default), as the node does."""
    if threads < 0:
        raise ValueError(f'threads must be >= 0, not {threads}')
    if threads:
        torch.set_num_threads(threads)


def device_name(dev: torch.device) -> str:
    """Return what the profile calls the device (GPU name, else the CPU's)."""
    if dev.type == 'cuda':
        return torch.cuda.get_device_name(dev)
    return platform.processor() or platform.machine()


def input_shape(card: Dict) -> Tuple[int, int, int]:
    """Return one input's (channels, height, width) from a model card."""
    pre = card['preprocess']
    return pre['channels'], pre['height'], pre['width']


def retime(model_dir: str, device: str = 'cpu', batches: Sequence[int] = (1, 2, 4, 8),
           runs: int = 200, threads: int = NODE_THREADS) -> Dict:
    """
    Measure the stage latencies again and write them into the existing profile.

    Temperatures and confidence tables stay as they are (they do not depend on the
    device). For a profile timed on another machine or with another thread count.
    """
    path = os.path.join(model_dir, PROFILE)
    profile = read_json(path, 'the profile')
    set_threads(threads)
    dev = torch.device(device)
    net, card = load_model(model_dir, device=str(dev))
    if profile.get('weights_sha256') != card['sha256']:
        raise ValueError(f'{path} was calibrated for other weights: run calibrate in full')
    profile.update(latency=measure_latency(net, input_shape(card), dev, batches, runs),
                   device=str(dev), device_name=device_name(dev), torch=torch.__version__,
                   threads=torch.get_num_threads())
    write_json(path, profile)
    return profile


def calibrate(model_dir: str, device: str = 'cpu', batches: Sequence[int] = (1, 2, 4, 8),
              runs: int = 200, threads: int = NODE_THREADS) -> Dict:
    """
    Calibrate a model folder on ``device``; write and return its profile.

    Stages are timed with ``threads`` CPU threads in torch (the node's ``torch_threads``;
    0: torch's default): a profile timed with two threads plans a node that runs one with
    stage times 1.3-1.7x too short (fashion_mnist on this project's CPU).
    """
    set_threads(threads)
    dev = torch.device(device)
    net, card = load_model(model_dir, device=str(dev))
    data = load_dataset(card['name'], seed=card['training']['seed'],
                        images=card.get('data', {}).get('images'))
    split = np.load(os.path.join(model_dir, 'split.npz'))
    data.splits = {k: split[k] for k in split.files}
    y_val = data.subset('val')[1]
    logits = exit_predictions(net, data, 'val', str(dev))
    temps = [fit_temperature(lg, y_val) for lg in logits]
    raw_conf = [softmax(lg).max(axis=1) for lg in logits]
    cal_conf = [softmax(lg, t).max(axis=1) for lg, t in zip(logits, temps)]
    ok = [lg.argmax(axis=1) == y_val for lg in logits]
    latency = measure_latency(net, input_shape(card), dev, batches, runs)
    # Warm the whole pipeline once as the executor would (conversion included).
    to_tensor_batch(data.subset('val')[0][:1], data.preprocess)
    profile = {
        'model': card['name'],
        'num_stages': net.num_stages,
        'device': str(dev),
        'device_name': device_name(dev),
        'torch': torch.__version__,
        'threads': torch.get_num_threads(),
        'latency': latency,
        'temperature': temps,
        'ece_before': [ece(c, o) for c, o in zip(raw_conf, ok)],
        'ece_after': [ece(c, o) for c, o in zip(cal_conf, ok)],
        'calibration_split': f'val ({len(y_val)} samples, never the test split)',
        'weights_sha256': card['sha256'],
    }
    profile.update(confidence_tables(logits, y_val, temps))
    write_json(os.path.join(model_dir, PROFILE), profile)
    card = read_json(os.path.join(model_dir, CARD), 'the model card')
    card['test_ece'] = test_ece(net, data, temps, str(dev))
    write_json(os.path.join(model_dir, CARD), card)
    return profile


def test_ece(net, data, temps: List[float], device: str) -> Dict[str, List[float]]:
    """ECE on the test split with the validation-fitted temperatures (reported only)."""
    logits = exit_predictions(net, data, 'test', device)
    y = data.subset('test')[1]
    ok = [lg.argmax(axis=1) == y for lg in logits]
    return {'before': [ece(softmax(lg).max(axis=1), o) for lg, o in zip(logits, ok)],
            'after': [ece(softmax(lg, t).max(axis=1), o)
                      for lg, t, o in zip(logits, temps, ok)]}
