"""Command-line interface: argument parsing and error reporting only.

Every command calls into the library. A user error (ValueError, FileNotFoundError,
PermissionError) is printed as one line, ``scalenet: error: ...``, with exit code 2 and no
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

__all__ = ["main"]

EXIT_USAGE = 2


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 3,4,6,3, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 3,4,6,3, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# ---------------------------------------------------------------------------- info
def _format_count(n: int, unit: str) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.3f} G{unit}"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M{unit}"
    return f"{n / 1e3:.1f} K{unit}"


def format_info(summary: dict[str, Any]) -> str:
    scales = summary["scales"]
    cw = max(4, *(len(str(c)) for b in summary["blocks"] for c in b["channels"]))
    groups = [
        ("channels", [f"x{s}".rjust(cw) for s in scales]),
        ("share %", [f"x{s}".rjust(4) for s in scales]),
        ("kernel", [f"x{s}".rjust(3) for s in scales]),
    ]
    cols = [" ".join(names) for _, names in groups]
    title = " | ".join(label.center(len(c)) for (label, _), c in zip(groups, cols))
    lines = [
        f"{summary['name'] or 'structure'}: {summary['stem']} stem, {summary['image_size']}x{summary['image_size']} "
        f"input, layers {','.join(map(str, summary['layers']))}, scales {','.join(map(str, scales))}",
        "",
        f"{'':<10} {'':>4} | {title} | {'':>13}",
        f"{'block':<10} {'side':>4} | {' | '.join(cols)} | {'MACs':>13}",
    ]
    for b in summary["blocks"]:
        ch = " ".join(str(c).rjust(cw) for c in b["channels"])
        sh = " ".join(f"{100 * s:4.0f}" for s in b["share"])
        ks = " ".join((f"{k}x{k}" if k else "-").rjust(3) for k in b["kernel_sizes"])
        lines.append(f"{b['block']:<10} {b['side']:>4} | {ch} | {sh} | {ks} | {b['macs']:>13,}")
    lines += [
        "",
        f"total: {summary['macs']:,} MACs ({_format_count(summary['macs'], 'MACs')}), "
        f"{summary['params']:,} params ({_format_count(summary['params'], '')}), {summary['num_classes']} classes",
    ]
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    from .factory import resolve_structure

    structure = resolve_structure(args.model, layers=args.layers)
    summary = structure.summary(image_size=args.image_size, num_classes=args.num_classes)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_info(summary))
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scalenet",
        description="ScaleNet: scale aggregation networks with data-driven neuron allocation (CVPR 2019).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="per-block allocation table, MACs and params of a model or structure file")
    p.add_argument("model", metavar="NAME|PATH", help="a published model name or a structure JSON")
    p.add_argument("--image-size", type=_positive_int, default=None, help="input side (default: the structure's own)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs counted (default 1000)")
    p.add_argument("--layers", type=_int_list, default=None, help="stage depths for a bare-list file, e.g. 2,2,2")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as e:
        print(f"scalenet: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("scalenet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `scalenet info ... | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
