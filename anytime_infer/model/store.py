"""
Saving and safely loading a model folder: weights.pt, card.json, profile.json.

Weights are loaded only with ``torch.load(weights_only=True)``; the sha256 recorded in the
card is checked first; a file that is corrupt, truncated or made for another architecture
or class count is refused with an error naming the file and what is wrong.
"""
import hashlib
import json
import os
from typing import Dict, Tuple

from anytime_infer.model.networks import build, MultiExitNet
import torch

WEIGHTS = 'weights.pt'
CARD = 'card.json'
PROFILE = 'profile.json'
BUNDLED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'models')


class ModelLoadError(RuntimeError):
    """A model folder, weight file, card or profile that cannot be used."""


def sha256_of(path: str) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def bundled_models() -> Dict[str, str]:
    """Names and folders of the models shipped inside the package."""
    if not os.path.isdir(BUNDLED_DIR):
        return {}
    return {n: os.path.join(BUNDLED_DIR, n) for n in sorted(os.listdir(BUNDLED_DIR))
            if os.path.isfile(os.path.join(BUNDLED_DIR, n, CARD))}


def resolve_model_dir(model: str) -> str:
    """Resolve a bundled model name or a path to a model folder."""
    bundled = bundled_models()
    if model in bundled:
        return bundled[model]
    if os.path.isdir(model):
        return os.path.abspath(model)
    raise ModelLoadError(f'no model {model!r}: not a bundled model ({", ".join(bundled)}) '
                         'and not a folder')


def read_json(path: str, what: str) -> Dict:
    """Read a JSON file, refusing a missing or malformed one with a clear error."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except FileNotFoundError:
        raise ModelLoadError(f'{path}: {what} is missing') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f'{path}: {what} is not valid JSON ({e})') from None


def write_json(path: str, data: Dict) -> None:
    """Write JSON with stable formatting (diff-friendly, reproducible)."""
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write('\n')


def save_weights(net: MultiExitNet, folder: str) -> str:
    """Save the state dict (float32, CPU) and return its sha256."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, WEIGHTS)
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, path)
    return sha256_of(path)


def load_model(folder: str, device: str = 'cpu') -> Tuple[MultiExitNet, Dict]:
    """Load a model folder safely; return (network in eval mode on device, card)."""
    card_path = os.path.join(folder, CARD)
    weights_path = os.path.join(folder, WEIGHTS)
    card = read_json(card_path, 'the model card')
    for key in ('arch', 'classes', 'sha256', 'num_stages', 'preprocess'):
        if key not in card:
            raise ModelLoadError(f'{card_path}: the model card lacks {key!r}')
    if not os.path.isfile(weights_path):
        raise ModelLoadError(f'{weights_path}: weight file is missing')
    digest = sha256_of(weights_path)
    if digest != card['sha256']:
        raise ModelLoadError(f'{weights_path}: sha256 {digest[:12]}... does not match the '
                             f'card ({card["sha256"][:12]}...): corrupt, truncated or replaced')
    try:
        state = torch.load(weights_path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: B902 - torch raises many types for a bad file
        raise ModelLoadError(f'{weights_path}: not a loadable weight file ({e})') from None
    if not isinstance(state, dict):
        raise ModelLoadError(f'{weights_path}: holds a {type(state).__name__}, not a state dict')
    try:
        net = build(card['arch'], len(card['classes']))
    except ValueError as e:
        raise ModelLoadError(f'{card_path}: {e}') from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ModelLoadError(
            f'{weights_path}: weights do not fit architecture {card["arch"]!r} with '
            f'{len(card["classes"])} classes ({" ".join(first[:3])[:300]})') from None
    if net.num_stages != card['num_stages']:
        raise ModelLoadError(f'{card_path}: card says {card["num_stages"]} stages, '
                             f'architecture has {net.num_stages}')
    net.eval().to(device)
    return net, card
