"""Where a process stands in a (possibly multi-process) run: torchrun's environment, the
process group (with a rendezvous store per restart attempt), metric reduction, the DDP wrapper
and mixed precision."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from ..devices import device_name

__all__ = ["DistContext", "is_main_process", "under_torchrun", "setup_distributed", "autocast", "on_main_rank"]


@dataclass
class DistContext:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files, logs and progress bars."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict[str, Any]:
        """Where the run trains, for its checkpoints: the device, the GPUs this process was
        shown (``CUDA_VISIBLE_DEVICES``; one entry per worker of :func:`~.pool.in_processes`)
        and the number of ranks."""
        name = device_name(self.device) + (f" ({self.device})" if self.device.type == "cuda" else "")
        return {"device": name, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "world_size": self.world_size}

    def all_reduce(self, values: list[float]) -> list[float]:
        """Sums of ``values`` over all ranks (the values themselves with one process)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a picklable object)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: nn.Module, compile: bool = False) -> nn.Module:
        """``model`` under DDP when there are several ranks, then compiled if asked."""
        net = model
        if self.enabled:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[self.local_rank] if self.device.type == "cuda" else None)
        return torch.compile(net) if compile else net


def under_torchrun() -> bool:
    """Whether this process is one of several ranks of a torchrun launch, from the environment
    alone (before any process group exists)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Whether this process is rank 0 of a torchrun launch (or not launched by torchrun at all),
    from the environment alone: for code that prints after the process group is gone."""
    return int(os.environ.get("RANK", "0")) == 0


def setup_distributed() -> DistContext:
    """Reads torchrun's environment; starts the process group when there is more than one rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=_attempt_store(rank, world_size, int(restart)), rank=rank,
                                    world_size=world_size)
    return DistContext(rank, world_size, local_rank, device)


def _attempt_store(rank: int, world_size: int, attempt: int) -> dist.Store:
    """The rendezvous store of one torchrun attempt. torchrun's agent keeps one store across
    restarts, and the process group's keys carry no attempt number: after a restart, a rank
    could read the address a worker of the previous attempt had published and fail to connect
    ("Gloo connectFullMesh failed ... Connection refused"; 4 restarts in 6 on this machine).
    A prefix per attempt keeps the attempts apart."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(host, port, world_size, is_master=not agent_hosts_it and rank == 0,
                          timeout=dist.constants.default_pg_timeout, multi_tenant=True)
    return dist.PrefixStore(f"scalenet/attempt-{attempt}", store)


def autocast(device: torch.device, enabled: bool):
    """Mixed precision: fp16 on CUDA, bf16 on CPU (a no-op when not enabled)."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def on_main_rank(work: Callable[[], Any]) -> Any:
    """``work()`` on rank 0 only under torchrun (what writes files or times networks), its
    JSON-able result (or its one-line error) sent to every rank; ``work()`` without torchrun."""
    if not under_torchrun():
        return work()
    d = setup_distributed()  # the group a training started, or a new one
    outcome = None
    if d.main:
        try:
            outcome = ("ok", work())
        except ValueError as e:
            outcome = ("error", str(e))
    kind, value = d.broadcast(outcome)
    if kind == "error":
        raise ValueError(value)
    return value
