"""Process-group set-up for `torchrun`: NCCL on GPUs, gloo on the CPU; a single process needs none."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """rank / world_size of this process (0 / 1 without torchrun) and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Joins the process group torchrun describes (WORLD_SIZE > 1 in the environment), or runs alone.

    device: "auto" (CUDA when available), "cpu" or "cuda". On CUDA each process takes GPU LOCAL_RANK.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world_size == 1:
        return DistInfo(0, 1, target)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), target)


def barrier(info: DistInfo) -> None:
    """Waits for every process (no-op alone)."""
    if info.world_size > 1:
        dist.barrier()


def broadcast_flag(info: DistInfo, flag: bool) -> bool:
    """Rank 0's value of a flag on every process (e.g. "stop now")."""
    if info.world_size == 1:
        return flag
    value = torch.tensor([int(flag)], device=info.device if info.device.type == "cuda" else "cpu")
    dist.broadcast(value, 0)
    return bool(value.item())


def shutdown(info: DistInfo) -> None:
    """Leaves the process group."""
    if info.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
