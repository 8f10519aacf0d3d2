"""Data-parallel statistics under ``torchrun``: shard the samples, all-reduce the sums, rank 0 finishes.

Statistics are sums over samples, so with the selected samples split into disjoint shards,

    C_in = sum_ranks C_in(rank),   s = sum_ranks s(rank),   N = sum_ranks N(rank),

and a data-parallel run equals the single-process run up to floating-point summation order. Rank ``r`` of
``W`` processes items ``r, r + W, r + 2W, ...`` of the (already seeded and sorted) selection: every sample
exactly once, shards balanced to within one item. After the pass every rank all-reduces (SUM) its running
sums; rank 0 computes spectra, writes the cache entry and broadcasts the result, so every rank returns the
same :class:`Result`. Backend: NCCL when the device is CUDA (each rank on ``cuda:LOCAL_RANK``), gloo on the CPU.

Multi-node uses torchrun's own rendezvous, e.g. on each of 2 nodes::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m analysis run --model ID --dataset ID --device cuda

(every node must be able to read the dataset; only rank 0 writes the cache). With ``--tokens-per-image``
the token sample of an image depends on its batch, so a sharded run samples other tokens than a single
process (still seeded and reproducible for the same world size).
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset, Subset


def is_active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if not is_active():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def init_from_env(device: str) -> str:
    """Join torchrun's process group when ``WORLD_SIZE > 1``; returns the device this rank should use."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    import torch.distributed as dist

    cuda = str(device).startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return device


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(dataset: Dataset, rank: int, world_size: int) -> Dataset:
    """Items ``rank, rank + world_size, ...`` of ``dataset`` (the whole dataset when ``world_size == 1``)."""
    if world_size <= 1:
        return dataset
    return Subset(dataset, range(rank, len(dataset), world_size))


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """In-place SUM over ranks of every tensor (no-op outside a process group)."""
    if not is_active():
        return
    import torch.distributed as dist

    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def all_reduce_int(value: int, device: torch.device) -> int:
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    all_reduce_sum([tensor])
    return int(tensor.item())


def broadcast_from_rank0(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (our own objects between our own processes)."""
    if not is_active():
        return obj
    import torch.distributed as dist

    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
