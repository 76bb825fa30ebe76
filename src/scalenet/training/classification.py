"""Classification training and evaluation on the shared run layer (:mod:`scalenet.training`).

- SGD with momentum, cosine LR with linear warmup, stepped per iteration (the release's recipe).
- DDP when launched by torchrun (gloo on CPU, nccl on CUDA); metrics are reduced across
  ranks and only rank 0 writes checkpoints, logs and progress bars.
- ``RUN_DIR/last.pt`` after every epoch and ``best.pt`` on a better validation top-1, written
  atomically; ``resume=True`` continues exactly (same data order, RNG states, optimiser, schedule).
- ``RUN_DIR/metrics.jsonl`` (one object per epoch) and TensorBoard event files.
- A NaN or inf loss stops the run with :class:`TrainingError`; the last good checkpoint stays.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from timm.utils import random_seed

from ..checkpoint import CheckpointError, load_init, read_state_dict
from ..compat import param_groups_weight_decay
from ..data import BUILTIN, DataSpec, build_data, class_mismatch
from ..errors import SettingError
from ..factory import create_model, load_hub
from ..hub import WEIGHTS, hub_folder, is_hub, read_hub_config
from ..models.scalenet import checkpoint_filter_fn
from ..structure import Structure
from .checkpointing import DEFAULT_SAVE_EVERY, CheckpointSaver, RunDir
from .distributed import DistContext, autocast, setup_distributed
from .loop import TrainingError, Updater, batches, fit

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "PRESETS", "is_training_checkpoint",
    "CHECKPOINT_FORMAT",
    "train",
    "evaluate",
    "evaluate_checkpoint",
    "load_run_checkpoint",
    "model_from_checkpoint",
    "cosine_with_warmup",
    "start_from",
]

CHECKPOINT_FORMAT = "scalenet-train"


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
    augment: bool = True  # the recipe's crop + flip; off only for very short runs
    init: str | None = None  # start from these weights (fine-tuning); the classifier is reset if it does not fit
    freeze_stages: int = 0  # fine-tuning: no gradients for the stem and the first N stages
    save_every: float | None = DEFAULT_SAVE_EVERY  # minutes between checkpoints inside an epoch (None: epoch ends only)
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


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR factor per iteration: linear warmup, then a cosine down to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[int]:
    k_max = min(max(ks), logits.shape[1])
    pred = logits.topk(k_max, dim=1).indices
    hit = pred.eq(target.view(-1, 1))
    return [int(hit[:, : min(k, k_max)].any(1).sum()) for k in ks]


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str = "cpu",
    *,
    channels_last: bool = False,
    amp: bool = False,
    d: DistContext | None = None,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (fractions) and mean loss over ``loader``; reduced across ranks."""
    device = torch.device(device)
    d = d or DistContext(device=device)
    model.eval()
    loss_sum = top1 = top5 = n = skipped = 0.0
    for x, y, s in batches(loader):
        skipped += s
        if len(y) == 0:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        c1, c5 = _topk_correct(logits, y)
        top1, top5, n = top1 + c1, top5 + c5, n + len(y)
    loss_sum, top1, top5, n, skipped = d.all_reduce([loss_sum, top1, top5, n, skipped])
    if n == 0:
        raise ValueError("no readable validation images; check the data directory")
    return {"top1": top1 / n, "top5": top5 / n, "loss": loss_sum / n, "images": int(n), "skipped": int(skipped)}


# ---------------------------------------------------------------------------- checkpoints
def load_run_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`train` (``weights_only=True``; ``mmap``: tensors mapped,
    not read)."""
    ckpt = read_state_dict(path, mmap=mmap)
    if ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt or "structure" not in ckpt:
        raise CheckpointError(f"{path}: not a scalenet training checkpoint (no model/structure entries)")
    return ckpt


def is_training_checkpoint(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a ``scalenet train`` checkpoint (its entries looked at, tensors mapped,
    not read), not a plain weight file."""
    if path is None or Path(path).suffix == ".safetensors" or not Path(path).is_file():
        return False
    try:
        load_run_checkpoint(path, mmap=True)
    except CheckpointError:  # a plain weight file (or an old, non-zip .pth)
        return False
    return True


def model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the trained model from its checkpoint alone (structure, classes, channels), or
    from a Hub-layout folder (``local-dir:DIR``, ``hf-hub:USER/REPO``: its config says the same)."""
    if is_hub(path):
        return load_hub(str(path))
    ckpt = load_run_checkpoint(path)
    structure = Structure.from_json(ckpt["structure"], source=f"{path} (structure)")
    model = create_model(structure, num_classes=ckpt["num_classes"], in_chans=ckpt["in_chans"])
    try:
        model.load_state_dict(checkpoint_filter_fn(ckpt["model"]))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit its own structure ({str(e).splitlines()[0]})") from None
    return model, ckpt


def evaluate_checkpoint(
    checkpoint: str | os.PathLike, data: str | os.PathLike, *, image_size: int | None = None, batch_size: int = 256,
    workers: int = 0, val_subset: int | None = None,
) -> dict[str, Any]:
    """Top-1/top-5 (and their errors) of a training checkpoint on a data set's validation split."""
    model, ckpt = model_from_checkpoint(checkpoint)
    # a built-in set has one image size: read it at its own, so that a mismatch of classes or
    # channels is reported as such (not as an image size the user never passed)
    size = image_size or (None if str(data) in BUILTIN else ckpt.get("image_size"))
    spec = build_data(data, size, val_subset=val_subset)
    if spec.num_classes != ckpt["num_classes"] or spec.in_chans != ckpt["in_chans"]:
        raise ValueError(
            f"{checkpoint} was trained for {ckpt['num_classes']} classes and {ckpt['in_chans']} channels, "
            f"but {data} has {spec.num_classes} classes and {spec.in_chans} channels; evaluate it on data like its own"
        )
    problem = class_mismatch(ckpt.get("classes"), spec.classes, str(checkpoint), str(data))
    if problem:
        raise ValueError(f"{problem}; evaluate it on data with the classes it was trained on")
    model.structure.check_input(spec.image_size)
    result = evaluate(model, spec.loader("val", batch_size, workers=workers))
    return {"data": spec.name, "top1": result["top1"], "top5": result["top5"], "top1_err": 1 - result["top1"],
            "top5_err": 1 - result["top5"], "loss": result["loss"], "images": result["images"]}


# ---------------------------------------------------------------------------- training
class ClassificationTask:
    """Cross-entropy on image batches; best checkpoint by validation top-1."""

    checkpoint_format = CHECKPOINT_FORMAT
    train_prefix = "train_"
    best_key = "best_top1"
    metric = "val_top1"
    initial_best = 0.0

    def __init__(self, structure: Structure, data: DataSpec, cfg: TrainConfig, val_loader, d: DistContext, label: str):
        self.structure, self.data, self.cfg, self.val_loader, self.d = structure, data, cfg, val_loader, d
        self.label = label
        self.advice = f"lower --lr (now {cfg.lr}) or add --warmup"

    def step(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        x, y = x.to(self.d.device, non_blocking=True), y.to(self.d.device, non_blocking=True)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return {"loss": F.cross_entropy(net(x), y, label_smoothing=self.cfg.label_smoothing)}

    def validate(self, net: nn.Module) -> dict[str, Any]:
        val = evaluate(net, self.val_loader, self.d.device, channels_last=self.cfg.channels_last, amp=self.cfg.amp,
                       d=self.d)
        return {"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                "skipped_images": val["skipped"]}

    def describe(self, record: Mapping[str, Any]) -> str:
        return f", val top-1 {100 * record['val_top1']:.2f}%"

    def identity(self) -> dict[str, Any]:
        s = self.structure
        # the batch size places a resume inside an epoch (steps x batch) and shapes the LR schedule
        return {"structure": (s.rows, s.layers, s.scales), "number of classes": self.data.num_classes,
                "data set": self.data.name, "number of training images": len(self.data.train),
                "batch size": self.cfg.batch_size, "class names": list(self.data.classes)}

    def identity_of(self, ckpt: Mapping[str, Any]) -> dict[str, Any]:
        s = Structure.from_json(ckpt["structure"], source="checkpoint (structure)")
        return {"structure": (s.rows, s.layers, s.scales), "number of classes": ckpt.get("num_classes"),
                "data set": ckpt.get("data"), "number of training images": ckpt.get("train_images"),
                "batch size": (ckpt.get("args") or {}).get("batch_size"), "class names": ckpt.get("classes")}

    def checkpoint(self, record: Mapping[str, Any]) -> dict[str, Any]:
        data = self.data
        return {
            "structure": self.structure.to_json(), "num_classes": data.num_classes, "in_chans": data.in_chans,
            "image_size": data.image_size, "mean": list(data.mean), "std": list(data.std), "classes": list(data.classes),
            "data": data.name, "train_images": len(data.train), "args": asdict(self.cfg),
            "val_top1": record.get("val_top1"),
        }


def start_from(model: nn.Module, path: str | os.PathLike, num_classes: int, announce: bool = True,
               classes: Sequence[str] | None = None) -> None:
    """Loads every fitting tensor of ``path`` into ``model`` (:func:`scalenet.checkpoint.load_init`);
    says in one line when the classifier stays freshly initialised. With ``classes`` (the data's
    class names), a file that records other class names (a training checkpoint or a Hub folder)
    gives no classifier either: its label i meant another class."""
    recorded = None
    if is_hub(path):  # the weights of a Hub-layout folder
        folder = hub_folder(str(path))
        config, _ = read_hub_config(folder, str(path))
        recorded, path = config.get("label_names"), folder / WEIGHTS
    if not Path(path).is_file():
        raise FileNotFoundError(f"--init: weights not found: {path}")
    if recorded is None and classes is not None:
        recorded = _recorded_classes(path)
    other = class_mismatch(recorded, classes, str(path), "this data") if classes is not None else None
    head = ("fc.weight", "fc.bias")
    filter_fn = (lambda s: {k: v for k, v in checkpoint_filter_fn(s).items() if k not in head}) if other \
        else checkpoint_filter_fn
    reset = load_init(model, path, filter_fn=filter_fn)
    if reset and announce:
        why = other or f"{path}: its classifier does not fit {num_classes} classes"
        print(f"note: {why}; the classifier starts from scratch", flush=True)


def _recorded_classes(path: str | os.PathLike) -> list[str] | None:
    """The class names a training checkpoint records; None for plain weight files."""
    if Path(path).suffix == ".safetensors":
        return None
    ckpt = read_state_dict(path, mmap=zipfile.is_zipfile(path))  # older files (not zip) cannot be mapped
    classes = ckpt.get("classes") if ckpt.get("format") == CHECKPOINT_FORMAT else None
    return list(classes) if isinstance(classes, (list, tuple)) else None


def _updater(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int, device: torch.device) -> Updater:
    groups = param_groups_weight_decay(model, cfg.wd, exclude_1d=cfg.no_bn_wd)
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(cfg.epochs * steps_per_epoch, round(cfg.warmup * steps_per_epoch))
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    return Updater(optimizer, scheduler, scaler)


def train(
    structure: Structure,
    data: DataSpec,
    cfg: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    resume: bool | str = False,
    description: str | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    on_epoch: Callable[[nn.Module, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Trains ``structure`` from scratch on ``data``, or continues the run in ``run_dir``:
    ``resume=True`` requires one, ``"auto"`` continues one if it is there (the same call then
    serves the first start and every restart).

    Checkpoints, ``metrics.jsonl`` and TensorBoard logs go to ``run_dir`` (supernets too:
    :mod:`scalenet.allocation.supernets`).
    ``regularizer(model)`` is added to every step's loss (e.g. :class:`scalenet.allocation.BNScaleL1`);
    ``on_epoch(model, record)`` runs after each epoch.
    """
    d = setup_distributed()
    structure.check_input(data.image_size)
    run = RunDir(run_dir, CHECKPOINT_FORMAT)
    resume = run.open(resume, d)

    random_seed(cfg.seed)  # torch, NumPy and Python's generators (timm.utils)
    model = create_model(structure, num_classes=data.num_classes, in_chans=data.in_chans)
    if cfg.init is not None and not resume:
        start_from(model, cfg.init, data.num_classes, announce=d.main, classes=data.classes)
    model.freeze_stages(cfg.freeze_stages)
    model = model.to(d.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader_kw = dict(workers=cfg.workers, seed=cfg.seed, rank=d.rank, world_size=d.world_size)
    train_loader = data.loader("train", cfg.batch_size, augment=cfg.augment, **loader_kw)
    val_loader = data.loader("val", cfg.batch_size, **loader_kw)
    if len(train_loader) == 0:
        raise SettingError(
            f"{data.name}: {len(data.train)} training images make no full batch of {cfg.batch_size} "
            f"on {d.world_size} process(es); lower {{batch_size}}", "batch_size")
    updater = _updater(model, cfg, len(train_loader), d.device)
    task = ClassificationTask(structure, data, cfg, val_loader, d, description or structure.name or "model")
    saver = CheckpointSaver(run, d, save_every=cfg.save_every, tensorboard=cfg.tensorboard)
    result = fit(task, model, updater, train_loader, saver, epochs=cfg.epochs, d=d, resume=resume,
                 compile=cfg.compile, amp=cfg.amp, regularizer=regularizer, on_epoch=on_epoch, progress=cfg.progress)
    return TrainResult(model=model, metrics=result.metrics, best_top1=result.best, run_dir=run.path)
