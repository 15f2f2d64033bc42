"""
Multi-exit ("anytime") networks that run one stage at a time.

Stage k takes the state left by stage k-1 (the input image for k = 1) and returns the new
state and the logits of exit k. ``forward`` runs every stage and returns all exits' logits,
so stage-wise execution and the full pass share one code path.
"""
from typing import Dict, List, Tuple, Type

import torch
from torch import nn


class MultiExitNet(nn.Module):
    """Backbone stages with one classifier exit after each stage."""

    arch = 'multi_exit'

    def __init__(self, stages: List[nn.Module], exits: List[nn.Module]) -> None:
        super().__init__()
        if len(stages) != len(exits) or not stages:
            raise ValueError('a multi-exit network needs one exit per stage')
        self.stages = nn.ModuleList(stages)
        self.exits = nn.ModuleList(exits)

    @property
    def num_stages(self) -> int:
        """Return the number of stages (= exits); stage 1 is the mandatory one."""
        return len(self.stages)

    def run_stage(self, k: int, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run stage ``k`` (1-based) on a batch; return (new state, logits of exit k)."""
        if not 1 <= k <= self.num_stages:
            raise IndexError(f'stage {k} out of 1..{self.num_stages}')
        state = self.stages[k - 1](state)
        return state, self.exits[k - 1](state)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Run all stages; return the logits of every exit, first to last."""
        outputs = []
        for k in range(1, self.num_stages + 1):
            x, logits = self.run_stage(k, x)
            outputs.append(logits)
        return outputs


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _exit(channels: int, pool: int, num_classes: int) -> nn.Sequential:
    """Exit head: pool to pool x pool, then one linear layer (a cheap, weak head)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(pool), nn.Flatten(),
                         nn.Linear(channels * pool * pool, num_classes))


class SmallExitCNN(MultiExitNet):
    """
    A 4-exit CNN for small grey images (Fashion-MNIST, 28x28).

    The mandatory stage is one thin convolution; the optional ones are wide pairs and the
    exit heads are deliberately small, so that early exits are cheap but weaker: the
    scheduler then has a real depth-for-time trade to make.
    """

    arch = 'small_exit_cnn'

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        stages = [
            nn.Sequential(_conv_bn(in_channels, 24), nn.MaxPool2d(2)),                # 14
            nn.Sequential(_conv_bn(24, 96), _conv_bn(96, 96), nn.MaxPool2d(2)),      # 7
            nn.Sequential(_conv_bn(96, 128), _conv_bn(128, 128)),                    # 7
            nn.Sequential(_conv_bn(128, 160), _conv_bn(160, 160), nn.MaxPool2d(2)),  # 3
        ]
        exits = [_exit(24, 2, num_classes), _exit(96, 1, num_classes),
                 _exit(128, 2, num_classes),
                 nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                               nn.Linear(160, num_classes))]
        super().__init__(stages, exits)


class MobileNetV2Exits(MultiExitNet):
    """
    torchvision's MobileNetV2 backbone (ImageNet weights) cut into stages with exits.

    Only the first blocks of the backbone are used (up to the 96-channel block, at 1/16
    of the input resolution): for small road crops they suffice, and they keep the
    bundled weights at a few MB. Exits follow blocks 3, 6, 10 and 13.
    """

    arch = 'mobilenet_v2_exits'
    CUTS = (4, 7, 11, 14)           # features[:4], [4:7], [7:11], [11:14]
    CHANNELS = (24, 32, 64, 96)

    def __init__(self, num_classes: int = 3, backbone_state: Dict = None) -> None:
        from torchvision.models import mobilenet_v2

        net = mobilenet_v2(weights=None)
        if backbone_state is not None:
            net.load_state_dict(backbone_state)
        starts = (0,) + self.CUTS[:-1]
        stages = [nn.Sequential(*net.features[a:b]) for a, b in zip(starts, self.CUTS)]
        exits = [nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1),
                               nn.Linear(c, num_classes)) for c in self.CHANNELS]
        super().__init__(stages, exits)


ARCHITECTURES: Dict[str, Type[MultiExitNet]] = {
    SmallExitCNN.arch: SmallExitCNN,
    MobileNetV2Exits.arch: MobileNetV2Exits,
}


def build(arch: str, num_classes: int) -> MultiExitNet:
    """Construct an (untrained) network by architecture name."""
    if arch not in ARCHITECTURES:
        raise ValueError(f'unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}')
    return ARCHITECTURES[arch](num_classes=num_classes)
