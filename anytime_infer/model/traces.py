"""Writing trace files: every test image's prediction and calibrated confidence per exit."""
import os

from anytime_infer.model.calibrate import softmax
from anytime_infer.model.data import load_dataset
from anytime_infer.model.store import load_model, PROFILE, read_json, resolve_model_dir
from anytime_infer.model.train import exit_predictions
from anytime_infer.scheduler.traces import write_trace
import numpy as np


def make_trace(model: str, out: str, device: str = 'cpu', split: str = 'test') -> int:
    """Write the trace CSV of a model on a split (default: test); return the sample count."""
    folder = resolve_model_dir(model)
    net, card = load_model(folder, device)
    profile = read_json(os.path.join(folder, PROFILE), 'the profile (run calibrate)')
    data = load_dataset(card['name'], seed=card['training']['seed'],
                        images=card.get('data', {}).get('images'))
    saved = np.load(os.path.join(folder, 'split.npz'))
    data.splits = {k: saved[k] for k in saved.files}
    logits = exit_predictions(net, data, split, device)
    labels = data.subset(split)[1]
    probs = [softmax(lg, t) for lg, t in zip(logits, profile['temperature'])]
    pred = np.stack([p.argmax(axis=1) for p in probs], axis=1)
    conf = np.stack([p.max(axis=1) for p in probs], axis=1)
    classes = np.array(card['classes'])
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_trace(out, [str(i) for i in data.splits[split]], classes[labels], classes[pred], conf)
    return len(labels)
