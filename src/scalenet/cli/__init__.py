"""The ``scalenet`` command line: argument parsing and error reporting.

Each group of commands has a module with one ``add_<command>_arguments`` and one
``cmd_<command>`` per command, which parses and calls the library; :mod:`.options` holds the
argument types and the option groups commands share. Defaults shown in the help come from the
library's config dataclasses, so they cannot drift from what runs. A user error (ValueError,
FileNotFoundError, PermissionError, a missing optional package) is printed as one line,
``scalenet: error: ...``, with exit code 2 and no traceback. A library error that names
settings (:class:`~scalenet.errors.SettingError`) is printed with each setting as its flag.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

from ..compat import destroy_process_group
from ..errors import SettingError
from ..training import Preempted, TrainingError, is_main_process
from . import allocation, detection, models, training

__all__ = ["main", "build_parser", "COMMANDS"]

EXIT_USAGE = 2

#: Library settings a command may take under another destination: keyword -> ``args`` attribute
#: (used where the command has no option of the keyword's own name).
LIBRARY_NAMES = {"run_dir": "out", "paths": "from_runs"}

#: command -> (help, add_<command>_arguments, cmd_<command>), in the order ``--help`` lists them
_ALL = {**models.COMMANDS, **training.COMMANDS, **allocation.COMMANDS, **detection.COMMANDS}
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    name: _ALL[name] for name in ("info", "train", "eval", "predict", "allocate", "latency-model", "study", "demo",
                                  "export", "bench", "detect-train", "detect-eval")
}


def _given(namespace: argparse.Namespace, dest: str, option: str) -> None:
    """Records that an option was on the command line (``args.given``: destination -> the option
    as typed): configs take exactly the options given, and commands refuse options that cannot
    apply, naming them as the user typed them."""
    given = getattr(namespace, "given", None)
    if given is None:
        given = {}
        setattr(namespace, "given", given)
    given[dest] = option


class _Store(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        if option_string is not None:
            _given(namespace, self.dest, option_string)


class _StoreTrue(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, default: bool = False, required: bool = False,
                 help: str | None = None):
        super().__init__(option_strings, dest, nargs=0, const=True, default=default, required=required, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, True)
        _given(namespace, self.dest, option_string)


class _Switch(argparse.BooleanOptionalAction):
    """``--x`` / ``--no-x`` (default None: the config's own default)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        super().__call__(parser, namespace, values, option_string)
        _given(namespace, self.dest, option_string)


class _OldSpelling(_Store):
    """An option's spelling before format 2 (``--seed-width`` for ``--supernet-width``): hidden
    from ``--help``, still accepted, with a one-line note of the new spelling on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"scalenet: note: {option_string} is now spelled {self.new}", file=sys.stderr)
        super().__call__(parser, namespace, values, option_string)


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too (no usage dump), exit code 2. Options record that they were
    given (``args.given``)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        for name in (None, "store"):
            self.register("action", name, _Store)
        self.register("action", "store_true", _StoreTrue)
        self.register("action", "switch", _Switch)
        self.register("action", "old_spelling", _OldSpelling)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scalenet",
        description="ScaleNet: scale aggregation networks with data-driven neuron allocation (CVPR 2019).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    parser.commands = {}
    for name, (help_text, add_arguments, func) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        add_arguments(p)
        p.set_defaults(func=func)
        parser.commands[name] = p
    return parser


def flag_spelling(command: argparse.ArgumentParser) -> Callable[[str], str | None]:
    """How ``command`` spells a library setting: its first visible long option (``width_mult`` ->
    ``--width-mult``; a hidden old spelling is never shown), None where it has no such option."""
    flags: dict[str, str] = {}
    for action in command._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.help != argparse.SUPPRESS:
            flags.setdefault(action.dest, longs[0])
    return lambda name: flags.get(name, flags.get(LIBRARY_NAMES.get(name, "")))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = dict(getattr(args, "given", None) or {})
    try:
        code = args.func(args)
        _close_process_group()
        return code
    except Preempted as e:  # SIGTERM: the position is saved; torchrun or the scheduler restarts the command
        if is_main_process():
            print(f"scalenet: {e}", file=sys.stderr)
        _close_process_group()  # every rank stopped at the same step
        return e.exit_code
    except SettingError as e:  # the library names settings; the user typed flags
        print(f"scalenet: error: {e.render(flag_spelling(parser.commands[args.command]))}", file=sys.stderr)
        return EXIT_USAGE
    # ImportError: a missing optional dependency (pycocotools, onnxruntime); the message says what to install
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
            ImportError) as e:
        print(f"scalenet: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingError as e:  # a diverged run: what happened and what is kept
        print(f"scalenet: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scalenet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `scalenet info ... | head`
        return 0


def _close_process_group() -> None:
    """Tears down the process group a torchrun run set up, before the interpreter exits: left to
    interpreter shutdown, gloo's worker threads can abort the process ("terminate called without
    an active exception", pytorch/pytorch#190489). Only where every rank got there (success or
    an agreed stop): after one rank's error the others may still be inside a collective."""
    destroy_process_group()
