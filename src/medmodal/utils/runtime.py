"""Seeds, devices and threads: the things that make a run reproducible and portable."""

from __future__ import annotations

import contextlib
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


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Mixed precision for ``train.amp`` and ``--amp`` prediction: bf16 autocast on CPU, fp16
    on CUDA; a no-op when off or on other devices (MPS)."""
    if not enabled or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def to_channels_last(module: torch.nn.Module) -> None:
    """Convolution weights in channels-last order (2D) or its 3D counterpart; modules that mix
    2D and 3D weights, or have none, are left as they are."""
    dims = {p.dim() for p in module.parameters()}
    if 5 in dims and 4 not in dims:
        module.to(memory_format=torch.channels_last_3d)
    elif 4 in dims and 5 not in dims:
        module.to(memory_format=torch.channels_last)
