"""Seeds, devices and threads: the things that make a run reproducible and portable."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from medmodal.errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; deterministic algorithms where torch has them."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    """A per-epoch seed, so a resumed run replays the same randomness."""
    return (seed * 1_000_003 + epoch * 7919 + salt) % (2**31 - 1)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; a device this machine lacks is a
    ConfigError (not torch's assertion deep inside the first ``.to()``)."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device is {name!r} but CUDA is not available here; use auto or cpu"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"train.device {name!r}: this machine has {torch.cuda.device_count()} GPU(s)"
        )
    if device.type == "mps" and not mps:
        raise ConfigError(
            f"train.device is {name!r} but Apple MPS is not available here; use auto or cpu"
        )
    return device


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(int(n))
