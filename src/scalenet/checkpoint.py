"""Reading and writing weight files (.pth/.pt and .safetensors) with clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .fileio import atomic_write

__all__ = ["read_state_dict", "load_weights", "load_init", "save_weights", "CheckpointError"]

_MAX_LISTED = 5


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not fit the model."""


def read_state_dict(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """Reads a weight file: .safetensors, or .pth/.pt through ``torch.load(weights_only=True)``
    (``mmap``: tensors mapped, not read, for a look at the entries; zip-format files only).

    Returns the raw top-level mapping (it may be a wrapper holding a state_dict).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu"))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{p}: not a readable safetensors file ({_first_line(e)})") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch.load raises many types on bad bytes (IndexError, EOFError, ...)
        raise CheckpointError(f"{p}: {_not_a_checkpoint(p, e)}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p}: holds a {type(obj).__name__}, not a state_dict")
    return dict(obj)


def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    filter_fn: Callable[[dict[str, Any], nn.Module], dict[str, Any]] | None = None,
    strict: bool = True,
) -> dict[str, Any]:
    """Loads a weight file into ``model`` after checking every key and shape.

    Raises :class:`CheckpointError` naming the file and the missing, unexpected and
    mis-shaped keys. With ``strict=False`` missing and unexpected keys are tolerated
    (shapes must still match). Returns the raw file content.
    """
    raw = read_state_dict(path)
    state = filter_fn(raw, model) if filter_fn is not None else raw
    expected = model.state_dict()
    problems = _misfits(state, expected, strict=strict, source="checkpoint")
    if problems:
        raise CheckpointError(f"{path} does not fit the model: " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=strict)
    return raw


def _misfits(state: Mapping[str, Any], expected: Mapping[str, torch.Tensor], *, strict: bool = True,
             skip: frozenset[str] = frozenset(), optional: Callable[[str], bool] = lambda k: False,
             source: str = "checkpoint") -> list[str]:
    """What keeps ``state`` from loading into a model whose state_dict is ``expected``: missing
    keys (unless ``optional``), unexpected ones (both only when ``strict``), shape mismatches and
    entries that are not tensors; keys in ``skip`` are not checked."""
    missing = [k for k in expected if k not in state and k not in skip and not optional(k)]
    unexpected = [k for k in state if k not in expected and k not in skip]
    shared = [k for k in expected if k in state and k not in skip]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in shared
                  if isinstance(state[k], torch.Tensor) and state[k].shape != expected[k].shape]
    not_tensors = [k for k in shared if not isinstance(state[k], torch.Tensor)]
    problems = []
    if strict and missing:
        problems.append(f"{len(missing)} missing keys ({_listed(missing)})")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_listed(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches, {source} vs model ({_listed(mismatched)})")
    if not_tensors:
        problems.append(f"{len(not_tensors)} entries that are not tensors ({_listed(not_tensors)})")
    return problems


def load_init(model: nn.Module, path: str | os.PathLike, classifier: str = "fc",
              filter_fn: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> list[str]:
    """Starts ``model`` from the weights in ``path`` (a release .pth, .safetensors, or a training
    checkpoint): every tensor that fits is loaded. The classifier (``classifier.weight`` and
    ``.bias``) is kept freshly initialised when the file's has another shape (another number of
    classes) or is absent; any other key that is missing, extra or of another shape is a
    :class:`CheckpointError` naming them. BN ``num_batches_tracked`` counters may be absent.
    Returns the names of the classifier tensors left initialised."""
    raw = read_state_dict(path)
    state = filter_fn(raw) if filter_fn is not None else raw
    expected = model.state_dict()
    head = frozenset({f"{classifier}.weight", f"{classifier}.bias"})
    reset = [k for k in expected if k in head and (k not in state or getattr(state[k], "shape", None) != expected[k].shape)]
    problems = _misfits(state, expected, skip=head, optional=lambda k: k.endswith("num_batches_tracked"), source="file")
    if problems:
        raise CheckpointError(f"{path} does not fit the model to start from: " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in expected and k not in reset}, strict=False)
    return reset


def save_weights(model_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Writes plain weights atomically: .safetensors, or a .pth state_dict otherwise."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import save

        data = save(state)
        return atomic_write(path, lambda f: f.write(data))
    return atomic_write(path, lambda f: torch.save(state, f))


def _not_a_checkpoint(path: Path, error: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, and what the file is. torch's own
    message advises ``weights_only=False``, which would run whatever code the file holds: it is
    never passed on."""
    with open(path, "rb") as f:  # the head only: a damaged checkpoint may be hundreds of MB
        head = f.read(4096)
    what = "it is not a PyTorch checkpoint or weight file (.pt/.pth, .safetensors)"
    if head.lstrip()[:1] in (b"{", b"["):
        import json

        try:
            obj = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            obj = None
        if isinstance(obj, list) or isinstance(obj, dict) and "rows" in obj:
            what = "it is a structure file (neurons per block and scale), not a training checkpoint"
        elif isinstance(obj, dict) and "runs" in obj and ("supernet" in obj or "seed" in obj):
            what = "it is an allocation's scores file, not a checkpoint"
        else:
            what = "it is a JSON or text file"
    elif head[:2] == b"PK" and "weights only" in str(error).lower():
        what = ("it holds Python objects besides tensors, which scalenet never loads (that could run code from the "
                "file); save the model's state_dict instead")
    elif head[:2] == b"PK" or head[:1] == b"\x80":
        what = f"it is cut off or damaged ({type(error).__name__})"
    return f"not a readable PyTorch checkpoint: {what}"


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
