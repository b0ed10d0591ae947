"""Data for the study: a generated CIFAR-shaped set (default), CIFAR-10 from a local folder,
or the user's own ``Dataset`` / ``DataLoader``. Nothing is downloaded."""

from __future__ import annotations

import os
import pickle
from typing import Any, Iterator, Optional, Tuple

from .._errors import ConfigError

SYNTHETIC = "synthetic-cifar"
CIFAR10 = "cifar10"
USER = "user"


def synthetic_cifar(n: int, seed: int, num_classes: int = 10) -> Tuple[Any, Any]:
    """``n`` generated 3x32x32 images with ``num_classes`` learnable classes.

    Each class is a fixed smooth colour pattern (random 4x4x3 values upsampled to 32x32, the
    same for every split); a sample is its class pattern at a random contrast, shifted by up to
    4 pixels, randomly mirrored, plus Gaussian pixel noise. A CNN learns it in a few hundred
    steps, so accuracy after a short training run means something. Returns float32 ``x``
    (n, 3, 32, 32), roughly zero-mean unit-variance, and int64 labels ``y``.
    """
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(20240)
    coarse = torch.randn(num_classes, 3, 4, 4, generator=g)
    templates = F.interpolate(coarse, size=(40, 40), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(int(seed))
    y = torch.randint(0, num_classes, (n,), generator=g)
    dx = torch.randint(0, 9, (n,), generator=g)
    dy = torch.randint(0, 9, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
    x = torch.empty(n, 3, 32, 32)
    for i in range(n):
        img = templates[y[i], :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        x[i] = img.flip(-1) if flip[i] else img
    x = x * contrast + 0.9 * torch.randn(x.shape, generator=g)
    return x, y


def _cifar_dir(root: str) -> str:
    for cand in (root, os.path.join(root, "cifar-10-batches-py")):
        if os.path.exists(os.path.join(cand, "data_batch_1")) and os.path.exists(
            os.path.join(cand, "test_batch")
        ):
            return cand
    raise ConfigError(
        f"cifar10 root {root!r} holds no CIFAR-10 python batches (data_batch_1..5, test_batch); "
        "give the folder that contains cifar-10-batches-py, or leave it out to use generated data"
    )


def load_cifar10(root: str) -> Tuple[Any, Any, Any, Any]:
    """CIFAR-10 from the python pickle batches under ``root``: normalised float tensors."""
    import numpy as np
    import torch

    d = _cifar_dir(root)

    def read(names: Any) -> Tuple[Any, Any]:
        xs, ys = [], []
        for name in names:
            path = os.path.join(d, name)
            if not os.path.exists(path):
                continue
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        x = torch.from_numpy(np.concatenate(xs)).float().div_(255.0)
        mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
        std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
        return (x - mean) / std, torch.from_numpy(np.concatenate(ys))

    x_tr, y_tr = read([f"data_batch_{i}" for i in range(1, 6)])
    x_te, y_te = read(["test_batch"])
    return x_tr, y_tr, x_te, y_te


class Batches:
    """Endless batches of one size from tensors (reshuffled each pass) or from a user dataset."""

    def __init__(self, source: Any, batch_size: int, seed: int, shuffle: bool = True) -> None:
        import torch

        self.batch_size = batch_size
        self._g = torch.Generator().manual_seed(int(seed))
        self._shuffle = shuffle
        self._tensors: Optional[Tuple[Any, Any]] = None
        self._loader: Any = None
        if isinstance(source, tuple):
            self._tensors = source
        elif isinstance(source, torch.utils.data.DataLoader):
            self._loader = source
        else:
            self._loader = torch.utils.data.DataLoader(
                source, batch_size=batch_size, shuffle=shuffle, drop_last=True, generator=self._g
            )
        self._it: Optional[Iterator[Any]] = None

    def __iter__(self) -> Iterator[Tuple[Any, Any]]:
        import torch

        if self._tensors is not None:
            x, y = self._tensors
            n = x.shape[0]
            if n < self.batch_size:
                raise ConfigError(
                    f"the data set has {n} samples, fewer than batch size {self.batch_size}; "
                    "use smaller --batch-sizes or more data"
                )
            while True:
                order = torch.randperm(n, generator=self._g) if self._shuffle else torch.arange(n)
                for i in range(0, n - self.batch_size + 1, self.batch_size):
                    idx = order[i : i + self.batch_size]
                    yield x[idx], y[idx]
        else:
            produced = False
            while True:
                for batch in self._loader:
                    produced = True
                    yield batch[0], batch[1]
                if not produced:
                    raise ConfigError(
                        "the data loader yields no batches; give a data set with at least one "
                        "full batch"
                    )
