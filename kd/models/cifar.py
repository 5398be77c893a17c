"""Convolutional models for 32x32 CIFAR images, registered in :data:`kd.models.MODELS`.

* ``resnet18_cifar``: torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool.
* ``resnet{8,14,20,32,44,56,110}``: the CIFAR ResNets of He et al. (2016), depth 6n + 2,
  three stages of n torchvision ``BasicBlock``s with 16/32/64 channels.
* ``plain_cnn{2,4,6,8,10}``: the plain CNNs of Mirzadeh et al. (2020), e.g. 2 layers =
  Conv16-MaxPool-Conv16-MaxPool-FC10; each conv is 3x3, padding 1, with batch norm and ReLU.
* ``wrn{depth}_{k}`` (``wrn16_{1,2,4,8}``, ``wrn28_10``, ``wrn40_{1,2,4}``): the wide ResNets of
  Zagoruyko & Komodakis (2016), depth 6n + 4, three stages of n pre-activation blocks with
  16k/32k/64k channels; the usual teachers and students of CIFAR distillation papers.

All answer the model contract: ``model(x)`` returns logits and every layer is a named submodule.
"""

from __future__ import annotations

from functools import partial

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from kd.errors import ConfigError
from kd.models.core import MODELS


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class CifarResNet(nn.Module):
    """ResNet-(6n+2) of He et al. (2016) for CIFAR; shortcuts project with a 1x1 conv + BN."""

    def __init__(self, depth: int, num_classes: int = 10,
                 widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        channels = widths[0]
        for index, width in enumerate(widths, start=1):
            stride = 1 if index == 1 else 2
            layers = []
            for block in range(blocks):
                downsample = None
                if block == 0 and (stride != 1 or channels != width):
                    downsample = nn.Sequential(nn.Conv2d(channels, width, 1, stride, bias=False),
                                               nn.BatchNorm2d(width))
                layers.append(BasicBlock(channels, width, stride if block == 0 else 1, downsample))
                channels = width
            self.add_module(f"layer{index}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus the shortcut.

    When the shape changes, the 1x1 projection reads the pre-activated input (as in the
    authors' code), so the block's first BN-ReLU serves both paths.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + residual


class WideResNet(nn.Module):
    """WRN-depth-k of Zagoruyko & Komodakis (2016): depth 6n + 4, stage widths 16k, 32k, 64k.

    Stem conv3x3 (16 channels), stages ``layer1..layer3`` of n :class:`WideBasicBlock`, then a
    final BN-ReLU, global average pooling and ``fc``. dropout: rate inside each block.
    """

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 10,
                 dropout: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 28, 40, "
                              f"...), got {depth}")
        if widen_factor < 1 or not 0.0 <= dropout < 1.0:
            raise ConfigError(f"WideResNet needs widen_factor >= 1 and dropout in [0, 1), got "
                              f"{widen_factor} and {dropout}")
        blocks = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        channels = 16
        for index, width in enumerate((16 * widen_factor, 32 * widen_factor, 64 * widen_factor),
                                      start=1):
            stride = 1 if index == 1 else 2
            stage = [WideBasicBlock(channels if b == 0 else width, width,
                                    stride if b == 0 else 1, dropout) for b in range(blocks)]
            self.add_module(f"layer{index}", nn.Sequential(*stage))
            channels = width
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal convs (fan out), unit BN, zero biases: the paper's initialization, which
        trains these deep pre-activation stacks more reliably than torch's defaults."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# Mirzadeh et al. (2020), Teacher Assistant Knowledge Distillation: the plain CNN family.
PLAIN_CNN_LAYOUTS = {
    2: ["C16", "M", "C16", "M"],
    4: ["C16", "C16", "M", "C32", "C32", "M"],
    6: ["C16", "C16", "M", "C32", "C32", "M", "C64", "C64", "M"],
    8: ["C16", "C16", "M", "C32", "C32", "M", "C64", "C64", "M", "C128", "C128", "M", "F64"],
    10: ["C32", "C32", "M", "C64", "C64", "M", "C128", "C128", "M", "C256", "C256", "C256",
         "C256", "M", "F128"],
}


class PlainCNN(nn.Module):
    """A plain CNN from a layout: ``C<k>`` conv-BN-ReLU, ``M`` 2x2 max-pool, ``F<k>`` hidden FC."""

    def __init__(self, layers: int, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        if layers not in PLAIN_CNN_LAYOUTS:
            raise ConfigError(f"plain CNN layers must be one of {sorted(PLAIN_CNN_LAYOUTS)}")
        layout = PLAIN_CNN_LAYOUTS[layers]
        features, channels, size = [], 3, image_size
        for item in (i for i in layout if not i.startswith("F")):
            if item == "M":
                features.append(nn.MaxPool2d(2))
                size //= 2
            else:
                width = int(item[1:])
                features += [nn.Conv2d(channels, width, 3, padding=1, bias=False),
                             nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                channels = width
        hidden, width = [], channels * size * size
        for item in (i for i in layout if i.startswith("F")):
            hidden += [nn.Linear(width, int(item[1:])), nn.ReLU(inplace=True)]
            width = int(item[1:])
        self.features = nn.Sequential(*features)
        self.hidden = nn.Sequential(*hidden)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(torch.flatten(self.features(x), 1)))

    def feature_taps(self) -> dict[str, list[str]]:
        """Module paths for the feature-based distillers (the keys of
        :func:`kd.methods.base.resnet_taps`): a stage is the last ReLU before each max-pool, the
        embedding is what the classifier reads (the hidden layers' output, or the pooled maps)."""
        layers = list(self.features)
        stages = [f"features.{i - 1}" for i, layer in enumerate(layers)
                  if isinstance(layer, nn.MaxPool2d)]
        return {"stages": stages, "middle": [stages[len(stages) // 2]], "last": [stages[-1]],
                "pair": stages[:2], "embedding": ["hidden" if len(self.hidden) else "features"]}


def flops_per_image(model: nn.Module, image_shape: tuple[int, ...] = (3, 32, 32)) -> int:
    """Floating-point operations of one forward pass of one image (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *image_shape, device=device))
    model.train(was_training)
    return counter.get_total_flops()


MODELS["resnet18_cifar"] = resnet18_cifar
MODELS.update({f"resnet{d}": partial(CifarResNet, d) for d in (8, 14, 20, 32, 44, 56, 110)})
MODELS.update({f"plain_cnn{n}": partial(PlainCNN, n) for n in PLAIN_CNN_LAYOUTS})
WIDE_RESNETS = ((16, 1), (16, 2), (16, 4), (16, 8), (28, 10), (40, 1), (40, 2), (40, 4))
MODELS.update({f"wrn{d}_{k}": partial(WideResNet, d, k) for d, k in WIDE_RESNETS})
