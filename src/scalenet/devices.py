"""What the machine is: a device's name (for tables and file names) and its free memory, and
whether a model's weights fit in it. Used by bench, the latency cost model, the demo's report
and the model constructor's memory check."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch

from .structure import Structure

__all__ = ["device_name", "device_slug", "available_memory", "check_memory"]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def device_slug(name: str) -> str:
    """A device name as a file-name part: ``AMD EPYC (2 threads)`` -> ``amd-epyc-2-threads``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def available_memory(device: torch.device | str | None = None) -> int | None:
    """Bytes free for tensors on ``device``: the CUDA allocator's free memory, or the system's
    available memory on CPU (Linux ``MemAvailable``); None where it cannot be read."""
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(structure: Structure, num_classes: int = 1000, in_chans: int = 3, device=None, dtype=None) -> None:
    """Raises one clear line, before anything is allocated, when the model's weights alone
    would not fit in the memory available on ``device``."""
    if device is not None and torch.device(device).type == "meta":
        return
    params = structure.params(num_classes, in_chans)
    needed = params * torch.empty((), dtype=dtype or torch.get_default_dtype(), device="meta").element_size()
    free = available_memory(device)
    if free is not None and needed > free:
        raise ValueError(
            f"{structure.name or structure.source}: {params:,} parameters need {needed / 2**30:,.1f} GiB for the "
            f"weights alone, but {free / 2**30:,.1f} GiB of memory are available; check the structure's channel counts"
        )
