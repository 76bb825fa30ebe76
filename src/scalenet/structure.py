"""Structures: the per-block neuron allocation of a ScaleNet, kept as data.

A structure holds one row per bottleneck block, ``[C_1, C_2, C_4, C_7, side]``: the
number of output channels ("neurons") of each scale branch of the block's SA block,
followed by the block's feature-map side at the structure's native image size (224 for
the published models). The side fixes each branch's kernel size, exactly as in the
original release: branch ``i`` (position in ``scales``) uses a 3x3 conv while
``side / 2**i > 1`` and a 1x1 conv otherwise.

Everything here is computed from the numbers alone: feature-map sides, kernel sizes,
multiply-adds (``macs``) and parameter counts. Tests check both against counting passes
over real models.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .fileio import atomic_write_text, read_json

__all__ = [
    "BlockSpec",
    "Structure",
    "DEFAULT_SCALES",
    "EXPANSION",
    "STAGE_DEPTHS",
    "STEMS",
    "StemSpec",
    "published_names",
    "format_summary",
]

DEFAULT_SCALES = (1, 2, 4, 7)
EXPANSION = 4
#: Stage depths of the published networks, keyed by network depth.
STAGE_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


@dataclass(frozen=True)
class StemSpec:
    """The layers before stage 1: a ``kernel`` x ``kernel`` conv with ``stride`` (padding
    ``kernel // 2``), BN, ReLU and, with ``pool``, a 3x3 stride-2 max-pool (padding 1)."""

    kernel: int
    stride: int
    pool: bool

    def conv_side(self, image_size: int) -> int:
        """Feature-map side after the conv (the first feature level)."""
        return (image_size + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1

    def side(self, image_size: int) -> int:
        """Feature-map side after the stem (the side of stage 1)."""
        side = self.conv_side(image_size)
        return (side + 2 * 1 - 3) // 2 + 1 if self.pool else side


#: ``imagenet``: the ResNet stem, 7x7 stride-2 conv + 3x3 stride-2 max-pool. ``small``: 3x3
#: stride-1 conv, no pool (for images of 64 px or less).
STEMS = {"imagenet": StemSpec(kernel=7, stride=2, pool=True), "small": StemSpec(kernel=3, stride=1, pool=False)}
FORMAT = "scalenet-structure"
_PUBLISHED = ("scalenet50_light", "scalenet50", "scalenet101", "scalenet152")


def published_names() -> tuple[str, ...]:
    """Names of the structures published with the paper."""
    return _PUBLISHED


def branch_kernel_size(side: int, branch: int) -> int:
    """The release's kernel rule: 3x3 while ``side / 2**branch > 1``, else 1x1.

    ``branch`` is the position in the scale list, not the pooling factor, so at side 7 the
    x4 branch (position 2) keeps its 3x3 conv while the x7 branch (position 3) is 1x1.
    """
    return 3 if side > 2**branch else 1


@dataclass(frozen=True)
class BlockSpec:
    """Everything needed to build or count one SA bottleneck block."""

    index: int  # position in the structure (row number, 0-based)
    stage: int  # 0-based stage
    block: int  # position inside the stage
    in_channels: int
    planes: int
    stride: int  # 2: the block max-pools its input 2x2 first (first block of stages 2+)
    channels: tuple[int, ...]  # output channels per scale
    side: int  # the stored side, which fixes the kernel sizes
    kernel_sizes: tuple[int, ...]  # per scale position, whether or not the branch exists

    @property
    def name(self) -> str:
        return f"layer{self.stage + 1}.{self.block}"

    @property
    def out_channels(self) -> int:
        return self.planes * EXPANSION

    @property
    def has_projection(self) -> bool:
        # the first block of every stage, stage 1 included (64 -> 256)
        return self.block == 0

    @property
    def width(self) -> int:
        """Concatenated SA output width, sum of the per-scale channels."""
        return sum(self.channels)


def _fail(source: str, message: str) -> None:
    raise ValueError(f"{source}: {message}")


def _as_int(value: Any, source: str, what: str) -> int:
    # JSON's Infinity and NaN parse as floats: int() of them raises, and names no file or row
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or int(value) != value:
        _fail(source, f"{what} is {value!r}; expected an integer")
    return int(value)


@dataclass(frozen=True)
class Structure:
    """A ScaleNet's per-block neuron allocation plus the layout it belongs to.

    ``rows[k] = (C_1, ..., C_L, side)`` for block ``k``, in stage order; ``layers`` holds the
    number of blocks per stage; ``scales`` the pooling factor of each branch; ``width`` the
    planes of stage 1 (doubling per stage) and the stem's output channels; ``image_size``
    the input side the stored sides belong to.
    """

    rows: tuple[tuple[int, ...], ...]
    layers: tuple[int, ...]
    scales: tuple[int, ...] = DEFAULT_SCALES
    stem: str = "imagenet"
    width: int = 64
    image_size: int = 224
    name: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    source: str = field(default="structure", compare=False, repr=False)

    def __post_init__(self) -> None:
        src = self.source
        if isinstance(self.scales, (str, bytes)) or not isinstance(self.scales, Sequence):
            _fail(src, f"scales must be a list of integers, got {self.scales!r}")
        scales = tuple(_as_int(s, src, "a scale") for s in self.scales)
        if not scales or any(s < 1 for s in scales) or list(scales) != sorted(set(scales)):
            _fail(src, f"scales {list(scales)} must be distinct positive integers in increasing order, e.g. 1,2,4,7")
        if isinstance(self.layers, (str, bytes)) or not isinstance(self.layers, Sequence):
            _fail(src, f"layers must be a list of stage depths, got {self.layers!r}")
        layers = tuple(_as_int(n, src, "a stage depth") for n in self.layers)
        if not layers or any(n < 1 for n in layers):
            _fail(src, f"layers {list(layers)} must be one or more positive stage depths, e.g. 3,4,6,3")
        if self.stem not in STEMS:
            _fail(src, f"stem {self.stem!r} is unknown; use one of {', '.join(STEMS)}")
        width = _as_int(self.width, src, "width")
        image_size = _as_int(self.image_size, src, "image_size")
        if width < 1 or image_size < 1:
            _fail(src, f"width ({width}) and image_size ({image_size}) must be positive")
        if isinstance(self.rows, (str, bytes)) or not isinstance(self.rows, Sequence):
            _fail(src, f"rows must be a list of [C_1, ..., C_{len(scales)}, side] lists, got {type(self.rows).__name__}")
        if len(self.rows) != sum(layers):
            _fail(src, f"{len(self.rows)} rows, but layers {','.join(map(str, layers))} need {sum(layers)}")
        rows = []
        expected = len(scales) + 1
        names = "[" + ", ".join(f"C_{s}" for s in scales) + ", side]"
        for k, row in enumerate(self.rows):
            if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or len(row) != expected:
                got = f"{len(row)} numbers" if isinstance(row, Sequence) else repr(row)
                _fail(src, f"row {k} has {got}; expected {expected}: {names}")
            values = tuple(_as_int(v, src, f"row {k} entry {j}") for j, v in enumerate(row))
            if any(v < 0 for v in values[:-1]):
                _fail(src, f"row {k} has a negative channel count {list(values[:-1])}; counts must be >= 0")
            if values[-1] < 1:
                _fail(src, f"row {k} has side {values[-1]}; the side must be a positive integer")
            if sum(values[:-1]) == 0:
                _fail(src, f"row {k} has no channels in any scale; every block needs at least one")
            rows.append(values)
        object.__setattr__(self, "rows", tuple(rows))
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "image_size", image_size)
        object.__setattr__(self, "meta", dict(self.meta or {}))
        self._check_sides()

    def _check_sides(self) -> None:
        sides = self.stage_sides(self.image_size)
        for spec in self.blocks():
            expected = sides[spec.stage]
            if spec.side != expected:
                _fail(
                    self.source,
                    f"row {spec.index} ({spec.name}) has side {spec.side}, but a {self.stem} stem at image size "
                    f"{self.image_size} gives {expected} there; fix the side or the image_size",
                )
            for scale, c in zip(self.scales, spec.channels):
                if c > 0 and spec.side // scale < 1:
                    _fail(
                        self.source,
                        f"row {spec.index} ({spec.name}) gives {c} channels to scale x{scale}, "
                        f"but its side {spec.side} is smaller than the pooling factor; set it to 0",
                    )

    # ------------------------------------------------------------------ layout
    @property
    def depth(self) -> int:
        """Number of weighted layers, counted like ResNet (3 per block + stem + fc)."""
        return 3 * len(self.rows) + 2

    @property
    def num_features(self) -> int:
        return self.width * 2 ** (len(self.layers) - 1) * EXPANSION

    def stage_sides(self, image_size: int | None = None) -> list[int]:
        """Feature-map side of each stage at ``image_size`` (default: the native size)."""
        n = self.image_size if image_size is None else image_size
        return _stage_sides(self.stem, n, len(self.layers))

    def check_input(self, image_size: int) -> None:
        """Raises a clear ValueError when an input of ``image_size`` cannot run through the network:
        a stage would have no pixels left. (A branch whose pooling factor exceeds its map's side
        pools the whole map instead, so any size that leaves every stage a pixel runs.)"""
        self.stage_sides(image_size)

    def stage_planes(self) -> list[int]:
        return [self.width * 2**i for i in range(len(self.layers))]

    def blocks(self) -> Iterator[BlockSpec]:
        """Yields one :class:`BlockSpec` per row, in execution order."""
        k = 0
        in_channels = self.width
        for stage, depth in enumerate(self.layers):
            planes = self.width * 2**stage
            for block in range(depth):
                row = self.rows[k]
                side = row[-1]
                yield BlockSpec(
                    index=k,
                    stage=stage,
                    block=block,
                    in_channels=in_channels,
                    planes=planes,
                    stride=2 if (stage > 0 and block == 0) else 1,
                    channels=tuple(row[:-1]),
                    side=side,
                    kernel_sizes=tuple(branch_kernel_size(side, i) for i in range(len(self.scales))),
                )
                in_channels = planes * EXPANSION
                k += 1

    # ------------------------------------------------------------------ counting
    def neuron_macs(self, spec: BlockSpec, side: int | None = None) -> list[int]:
        """MACs of one output neuron ("channel") of each scale position of a block whose output
        side is ``side`` (default: the block's side at the native image size): its branch conv
        at the pooled resolution, plus its input column of the 1x1 conv after the
        concatenation. The allocation's whole cost model: a network's MACs are these times the
        channel counts, plus what does not depend on the allocation."""
        side = spec.side if side is None else side
        return [
            spec.planes * k * k * max(1, side // scale) ** 2 + spec.out_channels * side * side
            for scale, k in zip(self.scales, spec.kernel_sizes)
        ]

    def block_macs(self, spec: BlockSpec, side: int) -> int:
        """Multiply-adds of one block's convs when its output side is ``side``."""
        area = side * side
        macs = spec.in_channels * spec.planes * area  # conv1 (after the stride-2 pool)
        macs += sum(c * cost for c, cost in zip(spec.channels, self.neuron_macs(spec, side)))  # branches + conv3
        if spec.has_projection:
            macs += spec.in_channels * spec.out_channels * area
        return macs

    def stem_macs(self, image_size: int | None = None, in_chans: int = 3) -> int:
        n = self.image_size if image_size is None else image_size
        stem = STEMS[self.stem]
        side = stem.conv_side(n)
        return in_chans * self.width * stem.kernel**2 * side * side

    def macs(self, image_size: int | None = None, num_classes: int = 1000, in_chans: int = 3) -> int:
        """Multiply-adds of all convolutions and the classifier for one image.

        Pooling, BN, upsampling, ReLU and additions count zero: the convention behind the
        paper's "3.8 GFLOPs" for ScaleNet-50 and torchvision's 4.09 for ResNet-50.
        """
        sides = self.stage_sides(image_size)
        total = self.stem_macs(image_size, in_chans)
        total += sum(self.block_macs(spec, sides[spec.stage]) for spec in self.blocks())
        return total + self.num_features * num_classes

    def block_params(self, spec: BlockSpec) -> int:
        p = spec.in_channels * spec.planes + 2 * spec.planes  # conv1 + bn1
        for c, k in zip(spec.channels, spec.kernel_sizes):
            if c:
                p += spec.planes * c * k * k + 2 * c  # branch conv + its BN
        p += spec.width * spec.out_channels + 2 * spec.out_channels  # conv3 + bn3
        if spec.has_projection:
            p += spec.in_channels * spec.out_channels + 2 * spec.out_channels
        return p

    def params(self, num_classes: int = 1000, in_chans: int = 3) -> int:
        """Number of learnable parameters (BN running statistics excluded)."""
        total = in_chans * self.width * STEMS[self.stem].kernel ** 2 + 2 * self.width
        total += sum(self.block_params(spec) for spec in self.blocks())
        if num_classes > 0:
            total += self.num_features * num_classes + num_classes
        return total

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_channels(
        cls,
        channels: Sequence[Sequence[int]],
        layers: Sequence[int],
        *,
        scales: Sequence[int] = DEFAULT_SCALES,
        stem: str = "imagenet",
        width: int = 64,
        image_size: int = 224,
        name: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> "Structure":
        """Builds a structure from per-block channel counts; the sides are derived."""
        sides = _stage_sides(stem, image_size, len(layers))
        stage_of = [s for s, n in enumerate(layers) for _ in range(n)]
        if len(channels) != len(stage_of):
            raise ValueError(f"structure: {len(channels)} channel rows, but layers {list(layers)} need {len(stage_of)}")
        rows = [tuple(int(c) for c in ch) + (sides[stage_of[k]],) for k, ch in enumerate(channels)]
        return cls(rows=tuple(rows), layers=tuple(layers), scales=tuple(scales), stem=stem, width=width,
                   image_size=image_size, name=name, meta=dict(meta or {}))

    @classmethod
    def uniform(
        cls,
        layers: Sequence[int],
        per_scale: int | Sequence[int],
        **kwargs: Any,
    ) -> "Structure":
        """Same channel count for every scale of every block.

        ``per_scale`` is one count for all stages or one count per stage. Scales whose
        pooled map would be empty at a block's side get zero channels.
        """
        scales = tuple(kwargs.get("scales", DEFAULT_SCALES))
        per_stage = [per_scale] * len(layers) if isinstance(per_scale, int) else list(per_scale)
        if len(per_stage) != len(layers):
            raise ValueError(f"structure: {len(per_stage)} per-stage counts for {len(layers)} stages")
        sides = _stage_sides(kwargs.get("stem", "imagenet"), kwargs.get("image_size", 224), len(layers))
        channels = [
            [per_stage[stage] if sides[stage] // s >= 1 else 0 for s in scales]
            for stage, n in enumerate(layers)
            for _ in range(n)
        ]
        return cls.from_channels(channels, layers, **kwargs)

    @classmethod
    def published(cls, name: str) -> "Structure":
        """One of the structures published with the paper (see :func:`published_names`)."""
        if name not in _PUBLISHED:
            raise ValueError(f"unknown model {name!r}; choose one of {', '.join(_PUBLISHED)}")
        text = resources.files("scalenet").joinpath("structures", f"{name}.json").read_text()
        return cls.from_json(json.loads(text), source=f"{name}.json")

    # ------------------------------------------------------------------ files
    @classmethod
    def from_json(cls, obj: Any, layers: Sequence[int] | None = None, source: str = "structure") -> "Structure":
        """Reads the original bare-list format or the object format with a ``rows`` key."""
        if isinstance(obj, Mapping):
            if "rows" not in obj:
                _fail(source, "the object has no 'rows' key; expected {\"rows\": [[C_1, C_2, C_4, C_7, side], ...], ...}")
            if obj.get("format", FORMAT) != FORMAT:
                _fail(source, f"format {obj.get('format')!r} is not {FORMAT!r}")
            rows = obj["rows"]
            file_layers = obj.get("layers")
            if layers is not None and file_layers is not None and list(layers) != list(file_layers):
                _fail(source, f"layers {list(layers)} were given, but the file says {list(file_layers)}")
            layers = layers if layers is not None else file_layers
            kwargs = {
                k: (tuple(obj[k]) if k == "scales" and isinstance(obj[k], list) else obj[k])
                for k in ("scales", "stem", "width", "image_size", "name")
                if obj.get(k) is not None
            }
            kwargs["meta"] = obj.get("meta") or {}
        elif isinstance(obj, list):
            rows, kwargs = obj, {}
            # The original release's files are bare lists for the ImageNet stem at 224.
            if rows and isinstance(rows[0], list) and rows[0] and isinstance(rows[-1], list):
                first_side = rows[0][-1]
                if isinstance(first_side, int) and first_side > 0:
                    kwargs["image_size"] = 4 * first_side
        else:
            _fail(source, f"expected a list of rows or an object with a 'rows' key, got {type(obj).__name__}")
        if not isinstance(rows, list) or not rows:
            _fail(source, "'rows' must be a non-empty list of [C_1, C_2, C_4, C_7, side] rows")
        if layers is None:
            layers = _infer_layers(len(rows), source)
        return cls(rows=rows, layers=layers, source=source, **kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike, layers: Sequence[int] | None = None) -> "Structure":
        """Reads and validates a structure file."""
        p = Path(path)
        obj = read_json(p, "structure file", "a JSON structure")
        s = cls.from_json(obj, layers=layers, source=str(p))
        return s if s.name is not None else replace(s, name=p.stem)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"format": FORMAT, "version": 1}
        if self.name:
            obj["name"] = self.name
        obj.update(
            layers=list(self.layers), stem=self.stem, width=self.width, scales=list(self.scales),
            image_size=self.image_size,
        )
        if self.meta:
            obj["meta"] = dict(self.meta)
        obj["rows"] = [list(r) for r in self.rows]
        return obj

    def dumps(self, bare: bool = False) -> str:
        """JSON text: one row per line. ``bare=True`` writes the original bare-list format."""
        rows = ",\n".join("  " + json.dumps(list(r)) for r in self.rows)
        if bare:
            return "[\n" + rows + "\n]\n"
        head = {k: v for k, v in self.to_json().items() if k != "rows"}
        lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
        rows = ",\n".join("    " + json.dumps(list(r)) for r in self.rows)
        return "{\n" + "\n".join(lines) + '\n  "rows": [\n' + rows + "\n  ]\n}\n"

    def save(self, path: str | os.PathLike, bare: bool = False) -> Path:
        """Writes the structure atomically (a temp file renamed into place)."""
        p = Path(path)
        atomic_write_text(p, self.dumps(bare=bare))
        return p

    # ------------------------------------------------------------------ summaries
    def summary(self, image_size: int | None = None, num_classes: int = 1000, in_chans: int = 3) -> dict[str, Any]:
        """Per-block table plus totals, as plain data (what ``scalenet info --json`` prints)."""
        n = self.image_size if image_size is None else image_size
        sides = self.stage_sides(n)
        blocks = []
        for spec in self.blocks():
            total = spec.width
            blocks.append({
                "block": spec.name,
                "side": sides[spec.stage],
                "channels": list(spec.channels),
                "share": [round(c / total, 4) for c in spec.channels],
                "kernel_sizes": [k if c else 0 for k, c in zip(spec.kernel_sizes, spec.channels)],
                "macs": self.block_macs(spec, sides[spec.stage]),
            })
        return {
            "name": self.name,
            "layers": list(self.layers),
            "scales": list(self.scales),
            "stem": self.stem,
            "image_size": n,
            "num_classes": num_classes,
            "macs": self.macs(n, num_classes, in_chans),
            "params": self.params(num_classes, in_chans),
            "blocks": blocks,
        }


def _stage_sides(stem: str, image_size: int, num_stages: int) -> list[int]:
    if stem not in STEMS:
        raise ValueError(f"stem {stem!r} is unknown; use one of {', '.join(STEMS)}")
    side = STEMS[stem].side(image_size)
    sides = [side]
    for _ in range(num_stages - 1):
        side //= 2
        sides.append(side)
    if sides[-1] < 1:
        raise ValueError(
            f"image size {image_size} is too small for {num_stages} stages with the {stem} stem; use a larger image"
        )
    return sides


def _infer_layers(num_rows: int, source: str) -> tuple[int, ...]:
    for depths in STAGE_DEPTHS.values():
        if sum(depths) == num_rows:
            return depths
    known = ", ".join(f"{sum(d)} rows for {n} layers" for n, d in STAGE_DEPTHS.items())
    raise ValueError(
        f"{source}: a structure of {num_rows} rows fits no known depth ({known}); pass the stage depths, "
        "e.g. layers=(2, 2, 2) or --layers 2,2,2"
    )


def _format_count(n: int, unit: str) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.3f} G{unit}"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M{unit}"
    return f"{n / 1e3:.1f} K{unit}"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The per-block table of :meth:`Structure.summary` (what ``scalenet info`` prints)."""
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
