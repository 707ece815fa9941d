"""Where and on how many threads torch runs a detector."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when present, else the CPU.

    Arguments:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (or ``"cuda:N"``).
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Runs the block with ``n`` torch CPU threads, then restores the count (None or 0:
    unchanged, torch's own setting).

    Arguments:
        n: the thread count, or None.
    """
    previous = torch.get_num_threads()
    if not n or n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
