"""scikit-learn's 8x8 handwritten digits (1,797 images, embedded in scikit-learn; no download)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .registry import DatasetInfo
from .transforms import build_transform

#: Fraction of each class held out for validation (stratified, fixed seed: the split never changes).
VAL_FRACTION = 0.2
SPLIT_SEED = 0


def digits_split(train: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(images in [0, 1] as (n, 8, 8) float32, labels)`` of the fixed train or validation split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)
    x_tr, x_va, y_tr, y_va = train_test_split(
        x, data.target, test_size=VAL_FRACTION, random_state=SPLIT_SEED, stratify=data.target
    )
    return (x_tr, y_tr) if train else (x_va, y_va)


class DigitsDataset(Dataset):
    """The digits split as ``(C, img_size, img_size)`` normalized tensors and int labels.

    Without augmentation the whole split is resized (bilinear) and normalized once, up front. With
    augmentation every item goes through timm's training transform (no horizontal flips: they change digits).
    """

    classes = [str(i) for i in range(10)]
    num_classes = 10

    def __init__(
        self,
        info: DatasetInfo,
        *,
        train: bool,
        img_size: int,
        in_chans: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: bool,
        **aug: Any,
    ) -> None:
        x, y = digits_split(train)
        self.targets = [int(t) for t in y]
        self.in_chans = in_chans
        if augment:
            self._images = [Image.fromarray(np.round(im * 255).astype(np.uint8), mode="L") for im in x]
            self._transform = build_transform(
                info, augment=True, img_size=img_size, mean=mean[:1], std=std[:1], **aug
            )
            self._tensors = None
            self._mean, self._std = mean, std
        else:
            t = torch.from_numpy(x)[:, None]
            if img_size != t.shape[-1]:
                t = F.interpolate(t, size=(img_size, img_size), mode="bilinear", align_corners=False)
            t = t.expand(-1, in_chans, -1, -1)
            m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
            s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
            self._tensors = ((t - m) / s).contiguous()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._tensors is not None:
            return self._tensors[index], self.targets[index]
        img = self._transform(self._images[index])  # (1, H, W), normalized with the first channel's stats
        if self.in_chans > 1:
            m0, s0 = self._mean[0], self._std[0]
            raw = img * s0 + m0
            m = torch.tensor(self._mean).view(-1, 1, 1)
            s = torch.tensor(self._std).view(-1, 1, 1)
            img = (raw.expand(self.in_chans, -1, -1) - m) / s
        return img, self.targets[index]
