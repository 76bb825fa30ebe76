"""Sharing a ScaleNet as timm users share models: a folder in the Hugging Face Hub layout.

The folder holds ``config.json`` (timm's: ``architecture``, ``num_classes``, ``label_names``,
``model_args`` with the structure's rows, layers, stem, width and scales, and
``pretrained_cfg`` with input size, mean/std, crop and interpolation), ``model.safetensors``
and a model card ``README.md`` with the Hub's YAML front matter. After ``import scalenet``,
``timm.create_model("local-dir:DIR", pretrained=True)`` rebuilds the model, published or
learned (architecture ``scalenet_structure``), and loads its weights; ``hf-hub:USER/REPO``
does the same once the folder is uploaded (``timm.models.push_to_hf_hub``).

This module holds the format (reading a folder's config, writing a folder, the model card) and
depends on neither the factory nor training. Our own entry points (:func:`scalenet.create_model`,
``predict``, ``eval``, ``train --init``) read the folders through
:func:`scalenet.factory.load_hub`, which checks them first and says in one line what is wrong;
:func:`scalenet.export.export_hub` writes them (``scalenet export --hub``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from huggingface_hub import snapshot_download
from torch import nn

from .compat import save_for_hf
from .fileio import check_output_dir, read_json, replace_directory
from .report import format_stage_summary
from .structure import Structure, published_names
from .version import __version__

__all__ = [
    "HUB_SCHEMES", "CONFIG", "WEIGHTS", "CARD", "HubCard", "is_hub", "hub_folder", "read_hub_config", "save_hub",
    "model_card", "card_from_checkpoint", "card_for_published",
]

#: Model names that point at a Hub-layout folder rather than a structure.
HUB_SCHEMES = ("local-dir:", "hf-hub:")
CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"


def is_hub(spec: Any) -> bool:
    """Whether ``spec`` names a Hub-layout folder (``local-dir:DIR`` or ``hf-hub:USER/REPO``)."""
    return isinstance(spec, str) and spec.startswith(HUB_SCHEMES)


def hub_folder(spec: str) -> Path:
    """The local folder of ``spec``: ``local-dir:DIR`` as it is, ``hf-hub:REPO`` downloaded (its
    config, weights and card) into the Hugging Face cache; one line when the Hub cannot be reached."""
    scheme, _, where = spec.partition(":")
    if scheme == "local-dir":
        folder = Path(where)
        if not folder.is_dir():
            raise FileNotFoundError(f"{spec}: no such folder; give a folder written by scalenet export --hub")
        return folder

    try:
        return Path(snapshot_download(where, allow_patterns=[CONFIG, WEIGHTS, CARD]))
    except Exception as e:  # offline, unknown repo, no permission: huggingface_hub raises many types
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{spec}: the Hugging Face Hub cannot be reached from here ({reason}); download the "
                         f"repository's {CONFIG} and {WEIGHTS} and use local-dir:PATH") from None


def read_hub_config(folder: Path, spec: str | None = None) -> tuple[dict[str, Any], Structure]:
    """``config.json`` of a Hub-layout folder and the structure its ``model_args`` hold; a missing
    file or a malformed structure is one line naming the folder."""
    name = spec or f"local-dir:{folder}"
    if not (folder / CONFIG).is_file():
        raise FileNotFoundError(f"{name}: no {CONFIG} in {folder}; a Hub-layout folder holds {CONFIG} and {WEIGHTS} "
                                "(scalenet export --hub writes one)")
    config = read_json(folder / CONFIG, CONFIG, "timm's config.json with model_args holding a ScaleNet structure")
    args = config.get("model_args") if isinstance(config, dict) else None
    if not isinstance(args, dict) or "structure" not in args:
        raise ValueError(f"{folder / CONFIG}: its model_args hold no ScaleNet structure; export the model with "
                         "scalenet export --hub")
    structure = Structure.from_json(args["structure"], source=f"{folder / CONFIG} (model_args.structure)")
    return config, structure


@dataclass
class HubCard:
    """What the model card says about the weights, each figure from where it was measured."""

    title: str
    data: str | None = None  # the training data's name
    train_images: int | None = None
    top1: float | None = None  # validation top-1 of these weights (a fraction)
    top1_source: str = ""  # where it comes from, e.g. "best.pt, epoch 3"
    notes: list[str] = field(default_factory=list)
    license: str = "apache-2.0"


def _architecture(structure: Structure) -> str:
    """The published name when the structure is a published allocation, else ``scalenet_structure``."""
    name = structure.name
    if name in published_names() and Structure.published(name).rows == structure.rows:
        return name
    return "scalenet_structure"


def save_hub(model: nn.Module, directory: str | os.PathLike, *, classes: Sequence[str] | None, mean: Sequence[float],
             std: Sequence[float], image_size: int, card: HubCard, force: bool = False) -> Path:
    """Writes ``model`` as a Hub-layout folder (config, ``model.safetensors``, model card), all at
    once: into a sibling temporary folder, then renamed; an existing ``directory`` is refused
    unless ``force``. Uses timm's ``save_for_hf`` for the weights and the config, and adds the
    structure to ``model_args`` and the preprocessing to ``pretrained_cfg``."""
    out = check_output_dir(directory, "--hub", force)
    structure: Structure = model.structure
    small = image_size <= 64  # the small-image recipe: no crop (scalenet.data.image_transforms)
    model.pretrained_cfg = {**model.pretrained_cfg, "architecture": _architecture(structure)}
    data_config = {"input_size": (model.in_chans, image_size, image_size), "mean": tuple(mean), "std": tuple(std),
                   "crop_pct": 1.0 if small else 0.875, "interpolation": "bilinear", "crop_mode": "center"}
    model_config: dict[str, Any] = {"label_names": list(classes)} if classes else {}
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_for_hf(model.eval(), str(tmp), model_config=model_config, model_args={"structure": structure.to_json()},
                    data_config=data_config)
        (tmp / CARD).write_text(model_card(structure, model.num_classes, model.in_chans, image_size, card))
        replace_directory(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def model_card(structure: Structure, num_classes: int, in_chans: int, image_size: int, card: HubCard) -> str:
    """The ``README.md`` of a Hub folder: YAML front matter (library, tags, license), a table of
    structure, MACs, parameters, data and measured top-1, and how to load it."""
    tags = ["image-classification", "timm", "scalenet"]
    front = ["---", "library_name: timm", f"license: {card.license}", "tags:", *[f"- {t}" for t in tags],
             "pipeline_tag: image-classification"]
    if card.data:
        front += ["datasets:", f"- {card.data}"]
    front += ["---", ""]
    top1 = f"{100 * card.top1:.2f}% ({card.top1_source})" if card.top1 is not None else "not measured"
    data = card.data or "not recorded"
    if card.data and card.train_images:
        data += f" ({card.train_images:,} training images)"
    rows = [
        ("architecture", f"`{_architecture(structure)}` (timm), structure in `config.json` `model_args`"),
        ("structure", f"{'-'.join(map(str, structure.layers))} blocks per stage, scales "
                      f"{', '.join(f'x{s}' for s in structure.scales)}, {structure.stem} stem, width {structure.width}"),
        ("MACs", f"{structure.macs(image_size, num_classes, in_chans):,} at {image_size} px"),
        ("parameters", f"{structure.params(num_classes, in_chans):,}"),
        ("classes", f"{num_classes}"),
        ("training data", data),
        ("validation top-1", top1),
    ]
    lines = [*front, f"# {card.title}", "",
             "A ScaleNet (*Data-Driven Neuron Allocation for Scale Aggregation Networks*, CVPR 2019), exported by "
             f"scalenet {__version__}.", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    lines += ["## Use", "", "```python", "import scalenet, timm  # importing scalenet registers the ScaleNets",
              'model = timm.create_model("hf-hub:USER/REPO", pretrained=True)  # or "local-dir:PATH"', "```", "",
              "## Neurons per scale, by stage", "", "```", format_stage_summary(structure), "```", ""]
    if card.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in card.notes], ""]
    return "\n".join(lines)


def card_from_checkpoint(ckpt: Mapping[str, Any], source: str) -> HubCard:
    """The card's facts from a ``scalenet train`` checkpoint: its data, and the validation top-1
    recorded for these weights (the checkpoint's own epoch)."""
    structure = Structure.from_json(ckpt["structure"], source=f"{source} (structure)")
    top1 = ckpt.get("val_top1")
    return HubCard(title=structure.name or Path(source).parent.name or "scalenet", data=ckpt.get("data"),
                   train_images=ckpt.get("train_images"), top1=float(top1) if top1 is not None else None,
                   top1_source=f"{Path(source).name}, epoch {int(ckpt['epoch'])}, as recorded in training")


def card_for_published(structure: Structure, weights: str | None) -> HubCard:
    """The card of a published model: the release's figures, labelled as such (not measured here)."""
    published = structure.meta.get("published") or {}
    notes = [f"weights: {Path(weights).name}" if weights else "random init: no weight file was given"]
    if published:
        notes.append(f"published ImageNet top-1/top-5 error {published['top1_err']:.2f}/{published['top5_err']:.2f} "
                     f"({published.get('recipe', 'the release')}); figures of the original release, not measured by "
                     "this library")
    return HubCard(title=structure.meta.get("title", structure.name or "scalenet"),
                   data="imagenet-1k" if weights else None, notes=notes)
