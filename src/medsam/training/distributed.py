"""One process or many: the same training code under ``torchrun`` (or any launcher that sets the env vars).

When ``WORLD_SIZE`` > 1 (torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), :func:`setup` starts a process group: NCCL when training on CUDA, gloo on the CPU. Each
process then takes ``cuda:LOCAL_RANK``. Rank 0 logs, validates and writes checkpoints; the others wait.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from medsam.errors import MedsamError
from medsam.models.device import resolve_device


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # this call started the process group and ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None) -> DistContext:
    """Resolve the device and, under a multi-process launcher, join (or start) the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, 0, resolve_device(device), False)
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    base = resolve_device(device)
    dev = torch.device("cuda", local) if base.type == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
        except (RuntimeError, ValueError) as exc:
            raise MedsamError(
                f"cannot start distributed training (rank {rank} of {world}, backend {backend}): {exc}. "
                "Launch with torchrun, which sets MASTER_ADDR/MASTER_PORT, or run a single process"
            ) from exc
        owns = True
    return DistContext(rank, world, local, dev, owns)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def broadcast(ctx: DistContext, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if not ctx.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(ctx: DistContext, values: list[float]) -> list[float]:
    """Element-wise sum over ranks of a list of numbers."""
    if not ctx.distributed:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]
