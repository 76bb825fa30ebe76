"""Training and evaluation: one loop for single- and multi-process runs.

- SGD with momentum, cosine LR with linear warmup, stepped per iteration (the release's recipe).
- DDP when launched by torchrun (gloo on CPU, nccl on CUDA); metrics are reduced across
  ranks and only rank 0 writes checkpoints, logs and progress bars.
- ``RUN_DIR/last.pt`` after every epoch and ``best.pt`` on improvement, written atomically;
  ``resume=True`` continues exactly (same data order, RNG states, optimiser, schedule).
- ``RUN_DIR/metrics.jsonl`` (one object per epoch) and TensorBoard event files.
- A NaN or inf loss stops the run with :class:`TrainingError`; the last good checkpoint stays.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, read_state_dict, save_weights
from .data import DataSpec
from .factory import create_model
from .fileio import atomic_write, atomic_write_text
from .models.scalenet import checkpoint_filter_fn
from .structure import Structure

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "PRESETS",
    "train",
    "evaluate",
    "load_run_checkpoint",
    "model_from_checkpoint",
]

CHECKPOINT_FORMAT = "scalenet-train"


class TrainingError(RuntimeError):
    """The run cannot go on (diverged loss). The message says what happened and what is kept."""


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    wd: float = 5e-4
    warmup: float = 0.0  # epochs of linear warmup
    label_smoothing: float = 0.0
    no_bn_wd: bool = False  # exclude BN parameters and biases from weight decay
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    workers: int = 0
    seed: int = 0
    sparsity: float = 0.0  # L1 weight on the SA-branch BN scales (network-slimming style)
    augment: bool = True  # the recipe's crop + flip; off only for very short runs
    progress: bool = True
    tensorboard: bool = True


#: Named recipes. ``imagenet`` is the release's: 120 epochs, cosine LR, batch 256, SGD 0.1.
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": dict(epochs=120, batch_size=256, lr=0.1, wd=1e-4, warmup=5, label_smoothing=0.0, workers=8),
}


@dataclass
class TrainResult:
    model: nn.Module
    metrics: list[dict[str, Any]] = field(default_factory=list)
    best_top1: float = 0.0
    run_dir: Path | None = None

    @property
    def final(self) -> dict[str, Any]:
        return self.metrics[-1] if self.metrics else {}


# ---------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed() -> Dist:
    """Reads torchrun's environment; starts the process group when there is more than one rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(rank, world_size, local_rank, device)


def _all_reduce(values: list[float], d: Dist) -> list[float]:
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------------------- pieces
def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def param_groups(model: nn.Module, wd: float, no_bn_wd: bool) -> list[dict[str, Any]]:
    if not no_bn_wd:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": wd}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # BN weights/biases and conv/fc biases
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def sa_bn_weights(model: nn.Module) -> list[torch.Tensor]:
    """The per-branch BN scales of every SA block (what allocation ranks)."""
    from .models.scalenet import SABottleneck

    return [bn.weight for m in model.modules() if isinstance(m, SABottleneck) for bn in m.bn2.values()]


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), np_state[2], np_state[3], np_state[4]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(model: nn.Module, optimizer, scheduler, scaler) -> dict[str, Any]:
    """What a checkpoint needs to continue a run exactly (with the epoch, which callers add)."""
    return {
        "version": 1,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": _rng_state(),
    }


def restore_training_state(ckpt: dict[str, Any], model: nn.Module, optimizer, scheduler, scaler) -> None:
    """The inverse of :func:`training_state`."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    _set_rng_state(ckpt["rng"])


def seed_all(seed: int) -> None:
    """Seeds torch, Python's and NumPy's generators (a run's starting point)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _kept(run: Path | None, epoch: int) -> str:
    return f"{run / 'last.pt'} (epoch {epoch}) is kept" if run is not None and epoch > 0 else "nothing was saved"


def optimizer_step(loss: torch.Tensor, optimizer, scaler, scheduler, *, where: str, kept: str, advice: str) -> None:
    """Backward and one (AMP-scaled) SGD step with the per-iteration LR update; a NaN or inf loss
    stops the run with a :class:`TrainingError` saying where, what is kept and what to try."""
    if not torch.isfinite(loss):
        raise TrainingError(f"loss became {float(loss.detach())} at {where}; {kept}; {advice}")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def _topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[int]:
    k_max = min(max(ks), logits.shape[1])
    pred = logits.topk(k_max, dim=1).indices
    hit = pred.eq(target.view(-1, 1))
    return [int(hit[:, : min(k, k_max)].any(1).sum()) for k in ks]


def _batches(loader: Iterable) -> Iterable[tuple[torch.Tensor, torch.Tensor, int]]:
    for batch in loader:
        if len(batch) == 3:
            yield batch
        else:
            yield batch[0], batch[1], 0


def _autocast(device: torch.device, enabled: bool):
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str = "cpu",
    *,
    channels_last: bool = False,
    amp: bool = False,
    d: Dist | None = None,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (fractions) and mean loss over ``loader``; reduced across ranks."""
    d = d or Dist(device=torch.device(device))
    device = torch.device(device)
    model.eval()
    loss_sum = top1 = top5 = n = skipped = 0.0
    for x, y, s in _batches(loader):
        skipped += s
        if len(y) == 0:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits = model(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        c1, c5 = _topk_correct(logits, y)
        top1, top5, n = top1 + c1, top5 + c5, n + len(y)
    loss_sum, top1, top5, n, skipped = _all_reduce([loss_sum, top1, top5, n, skipped], d)
    if n == 0:
        raise ValueError("no readable validation images; check the data directory")
    return {"top1": top1 / n, "top5": top5 / n, "loss": loss_sum / n, "images": int(n), "skipped": int(skipped)}


# ---------------------------------------------------------------------------- checkpoints
def load_run_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`train` (``weights_only=True``)."""
    ckpt = read_state_dict(path)
    if ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt or "structure" not in ckpt:
        raise CheckpointError(f"{path}: not a scalenet training checkpoint (no model/structure entries)")
    return ckpt


def model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the trained model from its checkpoint alone (structure, classes, channels)."""
    ckpt = load_run_checkpoint(path)
    structure = Structure.from_json(ckpt["structure"], source=f"{path} (structure)")
    model = create_model(structure, num_classes=ckpt["num_classes"], in_chans=ckpt["in_chans"])
    try:
        model.load_state_dict(checkpoint_filter_fn(ckpt["model"]))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit its own structure ({str(e).splitlines()[0]})") from None
    return model, ckpt


def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"output directory {run_dir} is a file; choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"output directory {run_dir} is not writable ({e.strerror or e}); choose another --out") from None
    last = run_dir / "last.pt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {last}; start without --resume")
    if not resume and last.is_file():
        raise ValueError(f"{run_dir} already holds a run ({last}); pass --resume to continue it or choose another --out")


# ---------------------------------------------------------------------------- training
def train(
    structure: Structure,
    data: DataSpec,
    cfg: TrainConfig,
    run_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    description: str | None = None,
) -> TrainResult:
    """Trains ``structure`` from scratch on ``data`` (or resumes ``run_dir/last.pt``).

    With ``run_dir=None`` nothing is written (used for short internal runs such as a seed
    network); otherwise checkpoints, ``metrics.jsonl`` and TensorBoard logs go there.
    """
    d = setup_distributed()
    structure.check_input(data.image_size)
    run = Path(run_dir) if run_dir is not None else None
    if run is not None and d.main:
        _prepare_run_dir(run, resume)
    if d.enabled:
        dist.barrier()

    seed_all(cfg.seed)
    model = create_model(structure, num_classes=data.num_classes, in_chans=data.in_chans).to(d.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(param_groups(model, cfg.wd, cfg.no_bn_wd), lr=cfg.lr, momentum=cfg.momentum, nesterov=False)
    train_loader = data.loader("train", cfg.batch_size, workers=cfg.workers, seed=cfg.seed, rank=d.rank,
                               world_size=d.world_size, augment=cfg.augment)
    val_loader = data.loader("val", cfg.batch_size, workers=cfg.workers, seed=cfg.seed, rank=d.rank, world_size=d.world_size)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{data.name}: {len(data.train)} training images make no full batch of {cfg.batch_size} "
            f"on {d.world_size} process(es); lower --batch-size"
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(cfg.epochs * steps_per_epoch, round(cfg.warmup * steps_per_epoch))
    )
    scaler = torch.amp.GradScaler(d.device.type, enabled=cfg.amp and d.device.type == "cuda")

    start_epoch, best_top1, metrics = 0, 0.0, []
    if resume and run is not None:
        ckpt = load_run_checkpoint(run / "last.pt")
        saved = Structure.from_json(ckpt["structure"], source=f"{run / 'last.pt'} (structure)")
        if saved.rows != structure.rows or saved.layers != structure.layers or saved.scales != structure.scales:
            raise ValueError(f"{run / 'last.pt'} holds a different structure than --model; resume with the same model")
        restore_training_state(ckpt, model, optimizer, scheduler, scaler)
        start_epoch, best_top1 = int(ckpt["epoch"]), float(ckpt["best_top1"])
        metrics = _read_metrics(run / "metrics.jsonl", upto=start_epoch)

    net: nn.Module = model
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    writer = None
    if run is not None and d.main:
        _rewrite_metrics(run / "metrics.jsonl", metrics)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run / "tensorboard"), purge_step=start_epoch + 1)

    sa_gammas = sa_bn_weights(model) if cfg.sparsity > 0 else []
    skipped_reported = False
    label = description or structure.name or "model"
    try:
        for epoch in range(start_epoch, cfg.epochs):
            train_loader.set_epoch(epoch)
            net.train()
            t0 = time.perf_counter()
            loss_sum = seen = skipped = 0.0
            bar = _progress(train_loader, steps_per_epoch, f"{label} epoch {epoch + 1}/{cfg.epochs}", cfg.progress and d.main)
            for step, (x, y, s) in enumerate(_batches(bar)):
                skipped += s
                if len(y) == 0:
                    continue
                x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with _autocast(d.device, cfg.amp):
                    loss = F.cross_entropy(net(x), y, label_smoothing=cfg.label_smoothing)
                if sa_gammas:
                    loss = loss + cfg.sparsity * sum(g.abs().sum() for g in sa_gammas)
                optimizer_step(loss, optimizer, scaler, scheduler, where=f"epoch {epoch + 1}, step {step + 1}",
                               kept=_kept(run, epoch), advice=f"lower --lr (now {cfg.lr}) or add --warmup")
                loss_sum += float(loss.detach()) * len(y)
                seen += len(y)
                if hasattr(bar, "set_postfix"):
                    elapsed = time.perf_counter() - t0
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", img_s=f"{seen * d.world_size / max(elapsed, 1e-9):.0f}")
            train_seconds = time.perf_counter() - t0
            loss_sum, seen, skipped = _all_reduce([loss_sum, seen, skipped], d)
            val = evaluate(net, val_loader, d.device, channels_last=cfg.channels_last, amp=cfg.amp, d=d)
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(seen, 1),
                "val_loss": val["loss"],
                "val_top1": val["top1"],
                "val_top5": val["top5"],
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
                "train_seconds": train_seconds,
                "images_per_s": seen / max(train_seconds, 1e-9),
            }
            if (skipped or val["skipped"]) and not skipped_reported:
                record["skipped_images"] = int(skipped + val["skipped"])
                if d.main:
                    print(f"note: skipped {record['skipped_images']} unreadable images", flush=True)
                skipped_reported = True
            metrics.append(record)
            if d.main:
                print(
                    f"{label} epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4f}, "
                    f"val top-1 {100 * record['val_top1']:.2f}%, {_rate(record['images_per_s'])} img/s, "
                    f"{record['seconds']:.1f} s",
                    flush=True,
                )
            improved = val["top1"] > best_top1
            best_top1 = max(best_top1, val["top1"])
            if run is not None and d.main:
                ckpt = {
                    "format": CHECKPOINT_FORMAT,
                    "epoch": epoch + 1,
                    **training_state(model, optimizer, scheduler, scaler),
                    "structure": structure.to_json(),
                    "num_classes": data.num_classes,
                    "in_chans": data.in_chans,
                    "image_size": data.image_size,
                    "mean": list(data.mean),
                    "std": list(data.std),
                    "classes": list(data.classes),
                    "data": data.name,
                    "args": asdict(cfg),
                    "best_top1": best_top1,
                    "val_top1": val["top1"],
                }
                # log and best.pt before last.pt: a kill in between leaves last.pt one epoch behind,
                # and a resume drops the log lines past it
                _append_metrics(run / "metrics.jsonl", record)
                if improved:
                    atomic_write(run / "best.pt", lambda f: torch.save(ckpt, f))
                atomic_write(run / "last.pt", lambda f: torch.save(ckpt, f))
                if writer is not None:
                    for k in ("train_loss", "val_loss", "val_top1", "val_top5", "lr", "images_per_s"):
                        writer.add_scalar(k, record[k], epoch + 1)
                    writer.flush()
            if d.enabled:
                dist.barrier()
    finally:
        if writer is not None:
            writer.close()
    if run is not None and d.main and (run / "best.pt").is_file():
        best = read_state_dict(run / "best.pt")
        save_weights(best["model"], run / "model.safetensors")
    return TrainResult(model=model, metrics=metrics, best_top1=best_top1, run_dir=run)


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2f}"


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5)


def _read_metrics(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r["epoch"] <= upto:
                records.append(r)
    return records


def _rewrite_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    # keeps exactly the epochs of the checkpoint being resumed (or none for a new run)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
