"""Data-parallel training over several processes (torchrun + DistributedDataParallel).

``medmodal train --nproc N`` starts N copies of itself through ``torch.distributed.run``
(torchrun); each reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and joins one process group
(gloo on CPU, NCCL on CUDA). Several machines join through torchrun's rendezvous
(``--nnodes``, ``--rdzv-endpoint``; see docs/architecture.md).

The contract, whatever the number of processes:

* ``train.batch_size`` is the **global** batch: every optimizer step sees the same samples as
  one process would, split between the ranks (:class:`ShardedBatchSampler`), and DDP averages
  the gradients. Each training sample goes to exactly one rank per epoch.
* validation is split between the ranks and the logits gathered, so every rank scores the same
  epoch the same way and picks the same best epoch;
* rank 0 alone writes (checkpoints, metrics, report) and logs.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist

from medmodal.errors import ConfigError


def world() -> tuple[int, int]:
    """``(rank, world size)``: ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and in an ordinary single process)."""
    return world()[0] == 0


def launched_by_torchrun() -> bool:
    """True when torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: str = "auto") -> bool:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA); False when this
    process was not started as one of several or the group already exists."""
    if not launched_by_torchrun() or not dist.is_available() or dist.is_initialized():
        return False
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    atexit.register(shutdown)
    return True


def shutdown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """A CUDA device becomes this process's own GPU (``LOCAL_RANK``) under torchrun."""
    if device.type == "cuda" and world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` in DistributedDataParallel. Unused parameters are allowed: a modality absent
    from a whole batch leaves its encoder out of that step."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def sync_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm statistics) on every rank, so all ranks hold one model."""
    if world()[1] == 1:
        return
    for b in module.buffers():
        dist.broadcast(b.data, src=0)


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. preparing a data set into the run folder); the other
    ranks start it once rank 0 is done."""
    rank, size = world()
    if size > 1 and rank != 0:
        dist.barrier()
    try:
        yield
    finally:
        if size > 1 and rank == 0:
            dist.barrier()


def gather_rows(x: torch.Tensor, index: Sequence[int], n: int) -> torch.Tensor:
    """Every rank's rows ``x`` (of the rows ``index`` of ``n``) put together in row order, on
    every rank."""
    _, size = world()
    if size == 1:
        return x
    parts: list[tuple[list[int], torch.Tensor] | None] = [None] * size
    dist.all_gather_object(parts, (list(index), x.cpu()))
    filled = [(idx, rows) for idx, rows in (p for p in parts if p is not None) if idx]
    if not filled:
        return x.cpu()
    out = torch.zeros((n, *filled[0][1].shape[1:]), dtype=filled[0][1].dtype)
    for idx, rows in filled:
        out[torch.as_tensor(idx)] = rows
    return out


def reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over the ranks."""
    if world()[1] == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


class ShardedBatchSampler:
    """Batches of an epoch's sample order, each global batch split between the ranks.

    ``order`` is the epoch's full order (the same on every rank: a seeded shuffle or weighted
    draw). Global batch ``b`` is ``order[b * batch_size : (b + 1) * batch_size]``; rank ``r``
    takes its elements ``r, r + world, ...``. So each sample goes to exactly one rank, and the
    ranks together take the steps one process would take. Empty shards are skipped (the
    training loop joins uneven ranks).
    """

    def __init__(
        self, order: Sequence[int], batch_size: int, rank: int, world_size: int, drop_last: bool
    ) -> None:
        self.order = [int(i) for i in order]
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last

    def global_batches(self) -> list[list[int]]:
        b, o = self.batch_size, self.order
        batches = [o[i : i + b] for i in range(0, len(o), b)]
        if self.drop_last and batches and len(batches[-1]) < b:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            mine = batch[self.rank :: self.world_size]
            if mine:
                yield mine

    def __len__(self) -> int:
        return sum(1 for batch in self.global_batches() if batch[self.rank :: self.world_size])


def launch_command(
    argv: Sequence[str],
    nproc: int,
    nnodes: str = "1",
    rdzv_endpoint: str | None = None,
    rdzv_id: str | None = None,
) -> list[str]:
    """The torchrun command that runs ``medmodal <argv>`` in ``nproc`` processes per machine
    (``--standalone`` on one machine; the c10d rendezvous at ``rdzv_endpoint`` across machines)."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, not {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes == "1" and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        if rdzv_endpoint is None:
            raise ConfigError(
                "--nnodes > 1 needs --rdzv-endpoint host:port (the same on every node)"
            )
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
        cmd.append(f"--rdzv-id={rdzv_id or 'medmodal'}")
    return [*cmd, "-m", "medmodal.cli", *argv]


LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--rdzv-endpoint", "--rdzv-id")


def strip_launch_options(argv: Sequence[str]) -> list[str]:
    """``argv`` without the launcher's own options (``--nproc 2``, ``--nnodes=2`` ...), i.e.
    what every started process runs."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in LAUNCH_OPTIONS:
            skip = "=" not in a
            continue
        out.append(a)
    return out


def run_launcher(cmd: Sequence[str], nproc: int) -> int:
    """Run the torchrun command (each process gets an equal share of this machine's cores
    unless ``OMP_NUM_THREADS`` is set); its exit code (the first failing process's)."""
    import subprocess

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(list(cmd), env=env)
