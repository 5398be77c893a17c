"""Harder augmentations for the transfer set, batched and random per image, on the device.

Each follows :data:`kd.data.Augment`: ``augment(images, generator) -> images``, with images
``[N, C, H, W]`` in 0..255 (uint8 in, float out: :meth:`kd.data.Split.normalize` divides by 255
either way), and all randomness drawn from ``generator``, so a seeded run repeats exactly.
torchvision's v2 transforms draw one set of parameters per call, i.e. one for the whole batch;
here every image draws its own.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2.functional import rgb_to_grayscale

from kd.data.cifar import RandomHorizontalFlip
from kd.data.core import Augment
from kd.errors import ConfigError


def _uniform(n: int, low: float, high: float, generator, device) -> Tensor:
    """``n`` draws of U(low, high), one per image, shaped ``[n, 1, 1, 1]`` to scale images."""
    u = torch.rand(n, generator=generator, device=device)
    return (low + (high - low) * u).view(n, 1, 1, 1)


# ----------------------------------------------------------------------------------------------
# Mixup (Zhang et al. 2018)

def mix(images: Tensor, partner: Tensor, lam: Tensor) -> Tensor:
    """x̃_i = λ_i · x_i + (1 − λ_i) · x_partner[i], in float (λ = 1 returns x unchanged)."""
    lam = lam.view(-1, 1, 1, 1)
    x = images.float()
    return lam * x + (1 - lam) * x[partner]


def mix_labels(labels: Tensor, partner: Tensor, lam: Tensor, num_classes: int) -> Tensor:
    """Mixup's soft labels: ỹ_i = λ_i · onehot(y_i) + (1 − λ_i) · onehot(y_partner[i])."""
    onehot = F.one_hot(labels, num_classes).float()
    lam = lam.view(-1, 1)
    return lam * onehot + (1 - lam) * onehot[partner]


def mixup_with_partners(images: Tensor, generator: torch.Generator | None,
                        alpha: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Mix every image with a partner from the same batch: ``(mixed, partner, λ)``.

    partner is a random permutation of the batch; λ_i ~ Beta(α, α) independently per image.
    """
    n, device = images.shape[0], images.device
    partner = torch.randperm(n, generator=generator, device=device)
    # Beta(α, α) is the first coordinate of Dirichlet(α, α). torch.distributions takes no
    # generator; this sampler does, so the draw stays tied to the run's seed.
    concentration = torch.full((n, 2), float(alpha), device=device)
    lam = torch._sample_dirichlet(concentration, generator=generator)[:, 0]
    return mix(images, partner, lam), partner, lam


class Mixup:
    """Mixup of the inputs only: for distillation the teacher labels the mixed image itself."""

    def __init__(self, alpha: float = 1.0):
        if not alpha > 0:
            raise ConfigError(f"mixup alpha must be > 0, got {alpha}")
        self.alpha = alpha

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return mixup_with_partners(images, generator, self.alpha)[0]


# ----------------------------------------------------------------------------------------------
# Geometric and photometric

class RandomRotation:
    """Rotate each image about its centre by its own angle θ ~ U(−degrees, degrees), bilinear,
    zero-filling the corners (one ``affine_grid`` + ``grid_sample`` for the batch)."""

    def __init__(self, degrees: float = 30.0):
        self.degrees = degrees

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        n = images.shape[0]
        angle = _uniform(n, -self.degrees, self.degrees, generator, images.device).view(n)
        cos, sin = torch.cos(angle * math.pi / 180), torch.sin(angle * math.pi / 180)
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1),
                             torch.stack([sin, cos, zero], 1)], 1)  # [N, 2, 3]
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False)


class RandomVerticalFlip(RandomHorizontalFlip):
    """Turn each image upside down with probability ``p``, each drawing its own coin."""

    axis = 2  # the height of [N, C, H, W]


class ColorJitter:
    """Per-image brightness, contrast and saturation factors b, c, s, each ~ U(1 − k, 1 + k)
    for its strength k (floored at 0), applied in that order and clipped to 0..255:

        x ← b·x;  x ← m + c·(x − m), m = the image's mean grey;  x ← g + s·(x − g), g = its grey

    (the blends of torchvision's ``adjust_*``; saturation does nothing to one-channel images).
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4):
        self.strengths = (brightness, contrast, saturation)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        n, device = images.shape[0], images.device
        b, c, s = (_uniform(n, max(0.0, 1 - k), 1 + k, generator, device) for k in self.strengths)
        x = (images.float() * b).clamp_(0, 255)
        mean = grey(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (mean + c * (x - mean)).clamp_(0, 255)
        g = grey(x)
        return (g + s * (x - g)).clamp_(0, 255)


def grey(images: Tensor) -> Tensor:
    """Luma ``[N, 1, H, W]`` of RGB images (ITU-R 601 weights); one-channel images as they are."""
    return rgb_to_grayscale(images) if images.shape[1] == 3 else images


class Compose:
    """Apply augmentations in order, all drawing from the same generator."""

    def __init__(self, augments: Sequence[Augment]):
        self.augments = list(augments)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for augment in self.augments:
            images = augment(images, generator)
        return images


__all__ = ["mix", "mix_labels", "mixup_with_partners", "Mixup", "RandomRotation",
           "RandomVerticalFlip", "ColorJitter", "Compose", "grey"]
