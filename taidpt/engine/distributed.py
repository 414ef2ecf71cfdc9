"""Data-parallel training and evaluation under ``torchrun`` (DDP semantics, no DataParallel).

``torchrun --nproc_per_node N train.py ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and a rendezvous address in their environment; :func:`init_distributed` joins
them (``nccl`` on CUDA, ``gloo`` on CPU). Every rank draws the same global batch (the same seeded
sampler) and trains on its contiguous shard (:class:`ShardedBatchSampler`); the loss of a shard is
weighted by ``N * shard size / global batch size`` (:func:`shard_loss_weight`) and the gradients
are averaged (:func:`average_gradients`), so one step equals the single-process step on the global
batch for every loss that is a mean over the batch's samples. Evaluation is sharded in
contiguous index ranges (:func:`shard_bounds`) and gathered in order (:func:`gather_objects`).
Without torchrun every function is the single-process identity.
"""
from __future__ import annotations

import logging
import os
from typing import Iterator, List, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, Sampler

logger = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    """True when the environment describes more than one process (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Rank 0: the process that logs and writes TensorBoard, checkpoints and results."""
    return rank() == 0


def init_distributed(use_cuda: bool) -> str:
    """Join the process group torchrun describes; returns the backend (``""`` when not launched
    by torchrun or already joined). CUDA ranks use ``cuda:LOCAL_RANK`` and ``nccl``."""
    if not launched_by_torchrun() or dist.is_initialized():
        return ""
    cuda = use_cuda and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend)
    return backend


def shutdown_distributed() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if world_size() > 1:
        dist.barrier()


def _reduce_device() -> torch.device:
    """Where collective buffers live: the current GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_bounds(n: int, rank_: int, world: int) -> Tuple[int, int]:
    """``[start, stop)`` of rank ``rank_``'s contiguous part of ``n`` items; the parts differ by at
    most one item, the first ``n % world`` ranks holding one more (``torch.tensor_split``'s)."""
    base, extra = divmod(n, world)
    start = rank_ * base + min(rank_, extra)
    return start, start + base + (1 if rank_ < extra else 0)


class ShardedBatchSampler(Sampler[List[int]]):
    """Each global batch of ``batch_sampler`` -> rank ``rank_``'s contiguous part of it."""

    def __init__(self, batch_sampler: BatchSampler, rank_: int, world: int) -> None:
        if not isinstance(batch_sampler, BatchSampler):
            raise TypeError(f"cannot shard a {type(batch_sampler).__name__} for torchrun: the "
                            "training loader needs a torch BatchSampler (batch_size=...)")
        self.batch_sampler, self.rank, self.world = batch_sampler, rank_, world

    def __iter__(self) -> Iterator[List[int]]:
        for batch in self.batch_sampler:
            start, stop = shard_bounds(len(batch), self.rank, self.world)
            yield list(batch)[start:stop]

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def global_batch_size(self, index: int) -> int:
        """Samples in global batch ``index`` (the last one may be short without ``drop_last``)."""
        size = self.batch_sampler.batch_size
        return min(size, len(self.batch_sampler.sampler) - index * size)


def shard_loader(loader: DataLoader, rank_: int, world: int) -> DataLoader:
    """``loader`` (a map-style loader with a batch size) rebuilt to yield rank ``rank_``'s shard of
    each of its global batches; the sampler and its seeded generator are the same objects."""
    workers = loader.num_workers
    return DataLoader(loader.dataset, batch_sampler=ShardedBatchSampler(loader.batch_sampler, rank_, world),
                      num_workers=workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                      generator=loader.generator, prefetch_factor=loader.prefetch_factor if workers else None,
                      persistent_workers=loader.persistent_workers)


def shard_loss_weight(batch_sampler: ShardedBatchSampler, index: int) -> float:
    """``world * shard size / global batch size`` of batch ``index``: a shard's batch-mean loss
    times it, gradients averaged over the ranks, gives the global batch-mean's gradient."""
    start, stop = shard_bounds(batch_sampler.global_batch_size(index), batch_sampler.rank,
                               batch_sampler.world)
    return batch_sampler.world * (stop - start) / batch_sampler.global_batch_size(index)


def average_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """All-reduce the gradients of ``parameters`` (those that have one) to their mean over the
    ranks, in one flat buffer."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if world_size() == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def average_scalars(values: dict, weight: float) -> dict:
    """``{name: float}`` of one shard (batch means) -> the global batch's means: the sum over the
    ranks of ``value * weight / world`` (``weight`` from :func:`shard_loss_weight`)."""
    if world_size() == 1:
        return values
    names = sorted(values)
    flat = torch.tensor([float(values[n]) * weight for n in names], dtype=torch.float64,
                        device=_reduce_device())
    dist.all_reduce(flat)
    return {n: float(v) / world_size() for n, v in zip(names, flat.tolist())}


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process)."""
    if world_size() == 1:
        return [obj]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
