"""Image preprocessing as the Chinese-CLIP family was trained: a square bicubic resize (no crop), RGB, CLIP mean/std.

Two forms of the same thing: ``image_transform`` (PIL → normalised float tensor, for one-off use) and the split form the
data pipeline uses (``ImageTransform`` / ``resize_to_uint8`` in DataLoader workers, ``normalize_batch`` on the device),
which moves a quarter of the bytes between processes and normalises where the arithmetic is cheap.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _geometry(resolution: int, train: bool) -> list:
    if train:
        # Chinese-CLIP's finetuning augmentation: a mild random resized crop, then AutoAugment.
        return [
            T.RandomResizedCrop(resolution, scale=(0.9, 1.0), interpolation=InterpolationMode.BICUBIC),
            T.AutoAugment(T.AutoAugmentPolicy.IMAGENET, interpolation=InterpolationMode.BICUBIC),
        ]
    return [T.Resize((resolution, resolution), interpolation=InterpolationMode.BICUBIC)]


def image_transform(resolution: int, train: bool = False) -> T.Compose:
    """PIL image → float tensor 3×r×r, normalised."""
    return T.Compose([to_rgb, *_geometry(resolution, train), T.ToTensor(), T.Normalize(MEAN, STD)])


def resize_to_uint8(resolution: int, train: bool = False) -> T.Compose:
    """PIL image → uint8 tensor 3×r×r (no normalisation; see ``normalize_batch``)."""
    return T.Compose([to_rgb, *_geometry(resolution, train), T.PILToTensor()])


@dataclass(kw_only=True)
class ImageTransform:
    """What a loader worker does to each image: PIL → uint8 3×``resolution``² (``normalize_batch`` finishes on the
    device). Passed to the data pipeline as an object, like the tokenizer; it pickles into each worker.

    ``augment``: the training augmentation, which draws from torch's RNG: the pipeline seeds that per batch so a
    resumed run replays it (``random`` tells it to)."""

    resolution: int
    augment: bool = False
    _compose: T.Compose = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self._compose = resize_to_uint8(self.resolution, train=self.augment)

    @property
    def random(self) -> bool:
        return self.augment

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self._compose(image)


@functools.lru_cache(maxsize=16)
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Built once per device: a tensor made from a Python list is a host→device copy, which would stall every step."""
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1) * 255
    return mean.to(device), std.to(device)


def normalize_batch(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 B×3×r×r (any device) → normalised ``dtype``; a float input is assumed normalised already."""
    if images.is_floating_point():
        return images.to(dtype)
    mean, std = _mean_std(images.device)
    return ((images.float() - mean) / std).to(dtype)
