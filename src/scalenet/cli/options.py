"""Argument types and the option groups several commands share.

Options that set a config dataclass's field carry the field's name as their destination, and
:func:`config_from` builds the config from them: the field list is the dataclass's own, so no
command keeps a copy of it. Help texts take their defaults from the dataclasses (:func:`default`).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Iterable

from ..data import DECODERS, build_data
from ..training import DEFAULT_SAVE_EVERY, PREEMPTED_EXIT_CODE, PRESETS, TrainConfig

__all__ = [
    "Recorder", "int_list", "name_list", "names", "positive_int", "nonneg_int", "fraction", "positive_float", "nonneg_float",
    "default", "add_force", "option", "refuse_given", "resume", "config_from", "config_options",
    "add_old_spelling", "add_fault_tolerance_arguments", "add_recipe_arguments", "add_training_arguments", "add_augment_argument",
    "train_config", "data_from",
]


# ---------------------------------------------------------------------------- argument types
def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 3,4,6,3, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 3,4,6,3, got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    found = [v for v in text.replace(" ", "").split(",") if v]
    if not found:
        raise argparse.ArgumentTypeError(f"expected comma-separated model names or structure files, got {text!r}")
    return found


def names(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _number(convert: Callable[[str], Any], accept: Callable[[Any], bool], expected: str, name: str):
    """An argparse type: ``convert`` the text, refuse (one line) what ``accept`` does not."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):  # NaN fails every comparison, so it is refused too
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text if convert is float else value}")
        return value

    parse.__name__ = name
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer", "positive_int")
nonneg_int = _number(int, lambda v: v >= 0, "a whole number, 0 or more", "nonneg_int")
fraction = _number(float, lambda v: 0.0 <= v <= 1.0, "a number between 0 and 1", "fraction")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number", "positive_float")
nonneg_float = _number(float, lambda v: 0 <= v < float("inf"), "a finite number, 0 or more", "nonneg_float")


def resume(text: str) -> bool | str:
    if text != "auto":
        raise argparse.ArgumentTypeError(f"expected nothing or 'auto', got {text!r}")
    return text


# ---------------------------------------------------------------------------- configs and flags
def default(config: type, name: str) -> Any:
    """A config dataclass's default for ``name`` (for help texts)."""
    f = {f.name: f for f in dataclasses.fields(config)}[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def config_options(config: type, args: argparse.Namespace) -> list[str]:
    """The fields of ``config`` that this command has an option for (destination = field name)."""
    return [f.name for f in dataclasses.fields(config) if hasattr(args, f.name)]


def config_from(config: type, args: argparse.Namespace, *, exclude: Iterable[str] = (), **base: Any):
    """``config`` from ``base``, overridden by every option of the command that sets one of its
    fields and was given on the command line (``args.given``); ``exclude``: fields the command
    sets itself in ``base``."""
    given = getattr(args, "given", {})
    values = dict(base)
    values.update({name: getattr(args, name) for name in config_options(config, args)
                   if name not in exclude and name in given})
    return config(**values)


def add_force(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--force", action="store_true", help=f"overwrite {what} if it exists (default: refuse)")


def option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def refuse_given(args: argparse.Namespace, dests: Iterable[str], why: str) -> None:
    """One line naming the options given on the command line that ``why`` says cannot apply."""
    typed = getattr(args, "given", {})
    given = [typed.get(d) or option(d) for d in dests if d in typed]
    if given:
        raise ValueError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply {why}; drop "
                         f"{'it' if len(given) == 1 else 'them'}")


class Recorder:
    """Adds options to a parser or an argument group and keeps their destinations, for commands
    that refuse a group of options together (``allocate --scores`` refuses every option that
    sets up training)."""

    def __init__(self, target: Any):
        self.target = target
        self.dests: list[str] = []

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        action = self.target.add_argument(*names, **kwargs)
        self.dests.append(action.dest)
        return action


def add_old_spelling(target: Any, old: str, action: argparse.Action) -> None:
    """``old``, the spelling before format 2 of ``action``'s option, as a hidden alias of it (same
    destination and type; a note names the new spelling when it is used)."""
    target.add_argument(old, action="old_spelling", dest=action.dest, type=action.type, metavar=action.metavar,
                        new=action.option_strings[0])


# ---------------------------------------------------------------------------- shared groups
def add_fault_tolerance_arguments(p: argparse.ArgumentParser) -> None:
    """--resume [auto] and --save-every, shared by train and detect-train."""
    p.add_argument("--resume", nargs="?", const=True, default=False, type=resume, metavar="auto",
                   help="continue the run in RUN_DIR from its newest complete checkpoint; '--resume auto' continues "
                        "one if it is there and starts fresh otherwise (one command for the first start and every "
                        "torchrun restart)")
    p.add_argument("--save-every", type=positive_float, default=None, metavar="MINUTES",
                   help=f"also checkpoint inside an epoch when this many minutes have passed since the last checkpoint "
                        f"(default {DEFAULT_SAVE_EVERY:g}; epochs shorter than that only save at their end). SIGTERM: the "
                        f"step finishes, a checkpoint is written, exit code {PREEMPTED_EXIT_CODE}")


def add_recipe_arguments(p: Any, recipe: TrainConfig, epochs: str | None = None) -> None:
    """The schedule options every command that trains shares, their defaults (shown in the help)
    from ``recipe``: train's and allocate's :class:`TrainConfig`, or a study's recipe. Each is None
    unless given: the command's config keeps its own value."""
    p.add_argument("--epochs", type=positive_int, default=None, help=f"default {epochs or recipe.epochs}")
    p.add_argument("--batch-size", type=positive_int, default=None, help=f"default {recipe.batch_size}")
    p.add_argument("--lr", type=positive_float, default=None,
                   help=f"peak learning rate of the cosine schedule (default {recipe.lr})")
    p.add_argument("--wd", type=nonneg_float, default=None, help=f"weight decay (default {recipe.wd})")
    p.add_argument("--warmup", type=nonneg_float, default=None, help=f"epochs of linear warmup (default {recipe.warmup})")


def add_training_arguments(p: Any, epochs: int | str | None = None) -> None:
    """The training options of train and allocate (None: the config's default, shown in the help)."""
    d = lambda name: default(TrainConfig, name)  # noqa: E731
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="the release's ImageNet recipe (120 epochs, cosine)")
    add_recipe_arguments(p, TrainConfig(), None if epochs is None else str(epochs))
    p.add_argument("--image-size", type=positive_int, default=None, help="default: from the data")
    p.add_argument("--label-smoothing", type=fraction, default=None, help=f"default {d('label_smoothing')}")
    p.add_argument("--no-bn-wd", action="store_true", help="no weight decay on BN parameters and biases")
    p.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--workers", type=nonneg_int, default=None, help=f"data-loading processes for image folders (default {d('workers')})")
    p.add_argument("--decode", choices=DECODERS, default="pil",
                   help="image-file decoder: PIL, or TorchCodec or torchvision.io (deprecated from torchvision 0.29) "
                        "with the transforms on uint8 tensors (default pil; see benchmarks/results/data-loading-*)")
    p.add_argument("--seed", type=int, default=None, help=f"default {d('seed')}")
    p.add_argument("--init", default=None, metavar="PATH",
                   help="start from these weights: a release .pth/.safetensors or a scalenet train checkpoint "
                        "(the classifier starts from scratch when the number of classes differs)")
    p.add_argument("--freeze-stages", type=nonneg_int, default=None, metavar="N",
                   help=f"fine-tuning: train only the stages after the first N and the head (default {d('freeze_stages')})")
    p.add_argument("--train-subset", type=positive_int, default=None, help="train on a random subset of N images")
    p.add_argument("--val-subset", type=positive_int, default=None, help="validate on a random subset of N images")
    add_augment_argument(p, default(TrainConfig, "augment"))


def add_augment_argument(p: Any, default_on: bool) -> None:
    """``--augment`` / ``--no-augment``, alike in every command that trains."""
    p.add_argument("--augment", action="switch", default=None,
                   help=f"crop + flip while training; --no-augment for very short runs (default: {'on' if default_on else 'off'})")


def train_config(args: argparse.Namespace, **base: Any) -> TrainConfig:
    """The TrainConfig of a command with :func:`add_training_arguments`: ``base``, then the preset
    (which overrides it), then the options given."""
    base = {**base, **(PRESETS[args.preset] if args.preset else {}), "progress": not args.no_progress}
    return config_from(TrainConfig, args, **base)


def data_from(args: argparse.Namespace, seed: int):
    """The data set of ``--data`` with the training options' image size, subsets and decoder."""
    return build_data(args.data, args.image_size, train_subset=args.train_subset, val_subset=args.val_subset, seed=seed,
                      decode=args.decode)
