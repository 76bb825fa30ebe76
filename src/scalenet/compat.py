"""Compatibility with the oldest releases scalenet supports, in one place.

The floors (``pyproject.toml``, tested in CI with ``.ci/floor-constraints.txt``) are torch 2.6,
torchvision 0.21 and timm 1.0.15. Each shim below names the release whose API it stands in for:
when the floor reaches that release, delete the shim and call the library directly.

This module imports nothing of scalenet, and only torch of the rest, so that
:func:`unsupported` can run before anything that an old release would break.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import sys
from types import ModuleType
from typing import Any

from torch import nn

__all__ = [
    "FLOORS", "EXTRAS", "version_tuple", "installed_version", "unsupported", "MissingExtra", "require",
    "create_classifier", "param_groups_weight_decay", "save_for_hf", "raise_recompile_limit", "recompile_limit",
    "timm_reads_local_dir", "check_floors", "check_import_order", "destroy_process_group",
]

#: The oldest release of each core dependency that the suite passes on (``pip`` checks the same
#: floors from ``pyproject.toml``; these catch an install made with ``--no-deps``).
FLOORS = {"torch": "2.6", "torchvision": "0.21", "timm": "1.0.15"}

#: The extra (or extras) that bring each optional module: ``pip install 'scalenet[EXTRA]'``.
EXTRAS = {"onnx": "export", "onnxruntime": "export", "pycocotools": "detection", "torchcodec": "torchcodec",
          "keras": ("tensorflow", "jax")}
#: Optional packages whose native code is built for one torch release: what to do when they do not load.
PAIRED_WITH_TORCH = {"torchcodec": "each TorchCodec release is built for one torch release (this is torch {torch}); "
                                   "install the one that matches it"}


def version_tuple(version: str) -> tuple[int, ...]:
    """``"2.6.0+cu124"`` -> ``(2, 6, 0)``; ``"1.0.15.dev0"`` -> ``(1, 0, 15)``."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(p) for p in match.group(0).split(".")) if match else ()


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (from its metadata), or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def unsupported() -> str | None:
    """One line naming each core dependency installed below its floor (possible with
    ``pip install --no-deps``), or None when all are at or above it."""
    old = []
    for name, floor in FLOORS.items():
        found = installed_version(name)
        if found is not None and version_tuple(found) < version_tuple(floor):
            old.append(f"{name}>={floor} (found {found})")
    if not old:
        return None
    pins = " ".join(f"'{o.split(' ')[0]}'" for o in old)
    return f"scalenet needs {', '.join(old)}; upgrade with: pip install {pins}"


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require(module: str, purpose: str) -> ModuleType:
    """Imports the optional ``module`` for ``purpose`` ("ONNX export"), or raises
    :class:`MissingExtra` in one line naming the extra to install."""
    top = module.split(".")[0]
    extras = EXTRAS.get(top, ())
    extras = (extras,) if isinstance(extras, str) else extras
    how = " or ".join(f"pip install 'scalenet[{e}]'" for e in extras) if extras else f"pip install {top}"
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name is not None and top == e.name.split(".")[0]:  # the package itself is absent
            raise MissingExtra(f"{purpose} needs {top}, which is not installed; install it with: {how}") from None
        problem = e
    except Exception as e:  # installed, but broken here: built for another torch or NumPy, say
        problem = e
    reason = (str(problem).strip().splitlines() or [type(problem).__name__])[0]
    advice = PAIRED_WITH_TORCH.get(top, "reinstall it")
    raise MissingExtra(f"{purpose} needs {top}, which is installed but does not load here ({reason}); "
                       f"{advice.format(torch=_torch_version())}") from None


def _torch_version() -> str:
    import torch

    return torch.__version__


def _timm_version() -> tuple[int, ...]:
    import timm

    return version_tuple(timm.__version__)


# ----------------------------------------------------------------------------------- timm
def create_classifier(num_features: int, num_classes: int, pool_type: str = "avg", device: Any = None,
                      dtype: Any = None) -> tuple[nn.Module, nn.Module]:
    """``timm.layers.create_classifier`` with ``device=``/``dtype=`` (timm 1.0.21 added them)."""
    from timm.layers import create_classifier as timm_create_classifier

    if _timm_version() >= (1, 0, 21):
        return timm_create_classifier(num_features, num_classes, pool_type=pool_type, device=device, dtype=dtype)
    pool, fc = timm_create_classifier(num_features, num_classes, pool_type=pool_type)  # timm < 1.0.21
    if device is not None or dtype is not None:
        fc = fc.to(device=device, dtype=dtype)
    return pool, fc


def param_groups_weight_decay(model: nn.Module, weight_decay: float, exclude_1d: bool = True) -> list[dict[str, Any]]:
    """Parameter groups with ``weight_decay``, 1-D tensors and biases without it unless
    ``exclude_1d`` is False (timm's ``weight_decay_exclude_1d``, from 1.0.27)."""
    from timm.optim import param_groups_weight_decay as timm_groups

    if _timm_version() >= (1, 0, 27):
        return timm_groups(model, weight_decay, weight_decay_exclude_1d=exclude_1d)
    if exclude_1d:  # timm < 1.0.27 always excludes them
        return timm_groups(model, weight_decay)
    # timm < 1.0.27, everything decayed: the groups timm 1.0.27 returns (empty ones left out)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [{"params": trainable, "weight_decay": weight_decay or 0.0}] if trainable else []


def save_for_hf(model: nn.Module, directory: str, *, model_config: dict[str, Any], model_args: dict[str, Any],
                data_config: dict[str, Any]) -> None:
    """timm's ``save_for_hf`` (safetensors) with the preprocessing in ``data_config`` (timm 1.0.31
    added ``data_config=``; before, the same keys go into the saved ``pretrained_cfg`` through
    the model's own cfg. timm 1.0.16 exports the function from ``timm.models``)."""
    if _timm_version() >= (1, 0, 31):
        from timm.models import save_for_hf as timm_save

        timm_save(model, directory, model_config=model_config, model_args=model_args, safe_serialization=True,
                  data_config=data_config)
        return
    if _timm_version() >= (1, 0, 16):
        from timm.models import save_for_hf as timm_save
    else:
        from timm.models._hub import save_for_hf as timm_save

    own = model.pretrained_cfg
    model.pretrained_cfg = {**own, **data_config}
    try:
        timm_save(model, directory, model_config=model_config, model_args=model_args, safe_serialization=True)
    finally:
        model.pretrained_cfg = own


def timm_reads_local_dir() -> bool:
    """Whether ``timm.create_model("local-dir:DIR")`` exists (timm 1.0.16 added it; scalenet's
    own loaders read such folders with any timm)."""
    return _timm_version() >= (1, 0, 16)


# ---------------------------------------------------------------------------------- torch
def _dynamo_config() -> Any:
    import torch._dynamo

    return torch._dynamo.config


def _limit_names(config: Any) -> tuple[str, str]:
    """dynamo's recompile limit and its accumulated twin: ``recompile_limit`` and
    ``accumulated_recompile_limit`` from torch 2.7, ``cache_size_limit`` and
    ``accumulated_cache_size_limit`` before."""
    if hasattr(config, "recompile_limit"):
        return "recompile_limit", "accumulated_recompile_limit"
    return "cache_size_limit", "accumulated_cache_size_limit"


def recompile_limit() -> int:
    """dynamo's limit on recompilations of one code object."""
    config = _dynamo_config()
    return getattr(config, _limit_names(config)[0])


def raise_recompile_limit(at_least: int) -> None:
    """Raises dynamo's recompile limits to ``at_least`` (and the accumulated one to 4x that)."""
    config = _dynamo_config()
    for name, limit in zip(_limit_names(config), (at_least, 4 * at_least)):
        if hasattr(config, name) and getattr(config, name) < limit:
            setattr(config, name, limit)


def destroy_process_group() -> None:
    """``torch.distributed.destroy_process_group()`` after a barrier, where a process group is up.
    With torch 2.6 (not seen with 2.14) a rank could hang for good in it: the destructor of the
    gloo group holds the GIL while joining its worker thread, which may still be freeing the last
    collective's tensors and needs the GIL for that. The barrier is queued behind that work and
    waited on without the GIL, so the worker is idle when the group is destroyed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _is_cli() -> bool:
    """Whether this process is the ``scalenet`` command (the console script or ``-m scalenet``)."""
    argv = getattr(sys, "orig_argv", sys.argv)
    script = sys.argv[0].replace("\\", "/").rsplit("/", 1)[-1] if sys.argv else ""
    return script in ("scalenet", "scalenet.exe") or any(
        a == "-m" and b == "scalenet" for a, b in zip(argv, argv[1:]))


def check_import_order() -> None:
    """Refuses, in one line, an import after TensorFlow where Triton is installed (CUDA builds of
    torch bring it): both bundle LLVM, and Triton loaded after TensorFlow crashes the process
    (a segmentation fault in torchvision's import, seen with TensorFlow 2.21 and torch 2.14)."""
    if "tensorflow" in sys.modules and "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
        raise ImportError("import scalenet (or torch and torchvision) before tensorflow or keras: TensorFlow and Triton "
                          "both bundle LLVM, and Triton loaded after TensorFlow crashes the process")


def check_floors() -> None:
    """Refuses a core dependency below its floor, in one line: an ImportError for ``import
    scalenet``; for the ``scalenet`` command, the line on stderr and exit status 2."""
    problem = unsupported()
    if problem is None:
        return
    if _is_cli():
        print(f"scalenet: error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    raise ImportError(problem)
