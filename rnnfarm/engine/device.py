"""The device a command runs a model on, and running out of that device's memory said in one line."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import UserError

CHOICES = "cpu, cuda, cuda:N or auto"


def cuda_count() -> int:
    """CUDA devices torch sees in this process (0 without CUDA, or with a torch built without it)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pick(name: str = "auto") -> torch.device:
    """The device ``--device`` names: cpu, cuda, cuda:N, or auto (cuda where torch sees a GPU, else cpu).

    A CUDA device torch does not see is refused here, before any checkpoint is read."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    found = re.fullmatch(r"cuda(?::(\d+))?", name)
    if found is None:
        raise UserError(f"--device {name!r} is not a device: give {CHOICES}")
    count = cuda_count()
    if not count:
        version = torch.__version__
        raise UserError(f"--device {name}: torch {version} sees no CUDA device here: use --device cpu or auto")
    if found[1] is not None and int(found[1]) >= count:
        raise UserError(f"--device {name}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device(name)


def out_of_memory_line(
    device: torch.device, *, batch: str, model: nn.Module, lower: str, device_option: bool = False
) -> str:
    """What to say when ``device`` runs out of memory: the batch, the model's size, and what to lower (and,
    for a command with ``--device``, on a GPU, that the CPU is there too)."""
    parameters = sum(p.numel() for p in model.parameters())
    line = f"out of memory on {device} with a batch of {batch} and a model of {parameters:,} parameters: lower {lower}"
    return line + (", or use --device cpu" if device_option and device.type != "cpu" else "")


@contextlib.contextmanager
def memory_named(
    device: torch.device, *, batch: str, model: nn.Module, lower: str, device_option: bool = False
) -> Iterator[None]:
    """Running out of the device's memory inside the block (torch.OutOfMemoryError, torch.cuda's among them)
    becomes a UserError of one line (``out_of_memory_line``)."""
    try:
        yield
    except torch.OutOfMemoryError:
        line = out_of_memory_line(device, batch=batch, model=model, lower=lower, device_option=device_option)
        raise UserError(line) from None
