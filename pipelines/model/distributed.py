"""Data-parallel training with PyTorch's own engine: ``torchrun ... flowad train --distributed``.

Every process (rank) runs the same ``flowad train``: it reads the same uniform sample of the
table (same seed, so the same rows), fits the same encoder, builds the same initial flow, and
then trains on its shard of each epoch's rows. ``DistributedDataParallel`` averages the
gradients of every step over the ranks (NCCL between GPUs, gloo between CPU processes), so
the weights stay identical everywhere; rank 0 alone saves the model.

The hook into the training loop is :class:`DataParallel`, a
:class:`~pipelines.model.training.Parallel`; the default mixture trains its flows one after the
other, and each flow is wrapped on its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from pipelines.errors import InputError
from pipelines.model.training import Parallel, TrainingLoss


class DataParallel(Parallel):
    """This process's part of data-parallel training, in an initialised process group.

    Arguments:
        device: where this rank's flow runs (its GPU, or the CPU).
    """

    def __init__(self, device: torch.device) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = device

    def wrap(self, loss: TrainingLoss) -> torch.nn.Module:
        # broadcast_buffers off: the flows' buffers are constants and ActNorm's "initialized"
        # flag, which broadcast() below brings into line once
        device_ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(loss, device_ids=device_ids, broadcast_buffers=False)

    def shard(self, order: Tensor) -> Tensor:
        # DistributedSampler's rule (drop_last): every rank gets n // world_size rows
        per_rank = len(order) // self.world_size
        return order[self.rank :: self.world_size][:per_rank]

    def mean(self, value: Tensor) -> float:
        total = value.detach().to(self.device, torch.float64).reshape(1)
        dist.all_reduce(total)
        return float(total) / self.world_size

    def broadcast(self, module: torch.nn.Module) -> None:
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (which sets these variables)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


@contextmanager
def process_group() -> Iterator[DataParallel]:
    """Joins the process group ``torchrun`` set up (NCCL on CUDA, gloo on CPUs) for the
    duration of the block, with this rank's GPU as its default device.

    Raises:
        InputError: not started by ``torchrun``.
    """
    if not launched_by_torchrun():
        raise InputError("--distributed needs the RANK, WORLD_SIZE and LOCAL_RANK that "
                         "torchrun sets: torchrun --nproc_per_node N -m pipelines.cli "
                         "train|retrain ... --distributed")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)  # so that the detector's "cuda" is this rank's GPU
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield DataParallel(device)
    finally:
        dist.destroy_process_group()
