"""A latency cost model of SA blocks on the device at hand: what a neuron of each scale costs in
milliseconds, and what having a branch at all costs.

MACs treat every neuron of a scale alike and a branch as free. On a real device a branch
costs a pooling, a small conv launch, an upsampling and its share of the concatenation,
whatever its width, and a neuron's cost depends on how well the device runs the conv it sits
in. The model, per stage ``t`` and scale ``s``::

    block_ms(t, c) = base[t] + sum_s fixed[t][s] * (c_s > 0) + sum_s per_neuron[t][s] * c_s

is fitted by least squares to timings of one SA bottleneck block of each stage (eval mode,
BN folded as :func:`scalenet.fuse` deploys it) over a spread of channel counts, at the batch
size, resolution, thread count and device the user names. A whole network is then predicted
as ``other + sum over blocks``, where ``other`` (stem, first-block shortcuts, head, and what
the per-stage fit leaves) is calibrated on one whole network. :func:`prediction_errors` checks
the model against other whole networks.

The model is a JSON file (``format: scalenet-latency``) that records the device and the
measurement settings; using it for other settings is refused (:meth:`LatencyModel.check`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .compat import raise_recompile_limit
from .devices import device_name, device_slug
from .errors import SettingError
from .factory import create_model, resolve_structure
from .fuse import fuse
from .models.scalenet import SABottleneck
from .fileio import atomic_write_text, cache_root, read_json
from .structure import BlockSpec, Structure
from .timing import interleaved

__all__ = ["LatencySettings", "StageCost", "LatencyModel", "measure_latency_model", "time_networks",
           "prediction_errors", "current_settings", "cache_path", "reference_for", "cached_model", "requested_model",
           "latency_model_for", "block_latencies", "format_block_latencies"]

FORMAT = "scalenet-latency"


@dataclass(frozen=True)
class LatencySettings:
    """Where and how a cost model was measured: it predicts only these."""

    device: str  # "cpu" or "cuda"
    device_name: str
    threads: int | None  # CPU threads (None on CUDA)
    batch_size: int
    image_size: int
    compile: bool
    torch: str

    def differences(self, other: "LatencySettings") -> list[str]:
        """The settings that differ, as "name: mine vs other" (the torch version is not compared)."""
        return [f"{f.name} {getattr(self, f.name)} vs {getattr(other, f.name)}" for f in dataclasses.fields(self)
                if f.name != "torch" and getattr(self, f.name) != getattr(other, f.name)]


def current_settings(device: str = "cpu", threads: int | None = None, batch_size: int = 16, image_size: int = 224,
                     compile: bool = False, option: str = "--device") -> LatencySettings:
    """The settings of this machine for ``device``; raises one clear line (naming ``option``)
    for CUDA without a GPU."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"{option} must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option} cuda: no CUDA GPU is present here; use {option} cpu")
    if threads is not None and threads < 1:
        raise SettingError(f"{{threads}} must be 1 or more, got {threads}", "threads")
    if device == "cpu":
        threads = threads or torch.get_num_threads()
    else:
        threads = None
    name = device_name(torch.device(device))
    if device == "cpu":
        name = name.rsplit(" (", 1)[0]  # the thread count is its own field
    return LatencySettings(device, name, threads, batch_size, image_size, compile, torch.__version__)


@dataclass
class StageCost:
    """Milliseconds of one SA bottleneck block of a stage: ``base`` (its 1x1 convs at no SA
    output, BN, ReLU, residual), ``fixed[s]`` for having scale ``s``'s branch at all and
    ``per_neuron[s]`` for each of its neurons."""

    base: float
    fixed: list[float]
    per_neuron: list[float]

    def block_ms(self, channels: Sequence[int]) -> float:
        return self.base + sum(f for f, c in zip(self.fixed, channels) if c > 0) + sum(
            p * c for p, c in zip(self.per_neuron, channels))


@dataclass
class LatencyModel:
    settings: LatencySettings
    scales: tuple[int, ...]
    layers: tuple[int, ...]  # the layout it was measured on (stage planes follow from width)
    width: int
    stem: str
    stages: list[StageCost]
    other: float = 0.0  # stem, first-block shortcuts, head: calibrated on a whole network
    fit: dict[str, Any] = field(default_factory=dict)  # measurement points and the fit's residuals

    # ------------------------------------------------------------------ prediction
    def check_structure(self, structure: Structure) -> None:
        """Refuses a structure of another layout (the per-stage costs would not apply). Its scales
        may be any subset of the measured ones (:meth:`stage_cost`)."""
        if not set(structure.scales) <= set(self.scales) or (len(structure.layers), structure.width, structure.stem) != (
                len(self.layers), self.width, self.stem):
            raise ValueError(
                f"the latency model was measured for scales {','.join(map(str, self.scales))} (or a subset), "
                f"{len(self.layers)} stages, width {self.width}, {self.stem} stem; {structure.name or 'this structure'} "
                f"has scales {','.join(map(str, structure.scales))}, {len(structure.layers)} stages, width "
                f"{structure.width}, {structure.stem} stem; measure a model for it (scalenet latency-model)"
            )

    def stage_cost(self, stage: int, scales: Sequence[int]) -> StageCost:
        """The costs of a block of ``stage`` with the branches ``scales``, any subset of the measured
        ones: an absent branch costs nothing. For a block form the fit never saw (one branch, as
        a plain bottleneck's single 3x3 conv, has no concatenation) this extrapolates; a study
        matched in latency measures every arm and calibrates (:mod:`scalenet.study`)."""
        cost = self.stages[stage]
        at = [self.scales.index(s) for s in scales]
        return StageCost(cost.base, [cost.fixed[i] for i in at], [cost.per_neuron[i] for i in at])

    def per_block(self, structure: Structure) -> list[tuple[str, float]]:
        """``(block name, predicted ms)`` per SA block."""
        self.check_structure(structure)
        return [(spec.name, self.stage_cost(spec.stage, structure.scales).block_ms(spec.channels))
                for spec in structure.blocks()]

    def predict(self, structure: Structure) -> float:
        """Predicted milliseconds of a forward pass of the whole network."""
        return self.other + sum(ms for _, ms in self.per_block(structure))

    def neuron_ms(self, stage: int, scale: int, branch_exists: bool) -> float:
        """What one more neuron of ``scale`` (its position in ``scales``) costs in ``stage``:
        with the branch's fixed cost when it is the branch's first neuron."""
        cost = self.stages[stage]
        return cost.per_neuron[scale] + (0.0 if branch_exists else cost.fixed[scale])

    # ------------------------------------------------------------------ files
    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, "settings": dataclasses.asdict(self.settings),
                "scales": list(self.scales), "layers": list(self.layers), "width": self.width, "stem": self.stem,
                "stages": [dataclasses.asdict(s) for s in self.stages], "other": self.other, "fit": self.fit}

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyModel":
        p = Path(path)
        raw = read_json(p, "latency model", "a latency model from scalenet latency-model")
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"{p}: not a latency model (no \"format\": \"{FORMAT}\"); build one with scalenet latency-model")
        try:
            return cls(LatencySettings(**raw["settings"]), tuple(raw["scales"]), tuple(raw["layers"]), int(raw["width"]),
                       raw["stem"], [StageCost(**s) for s in raw["stages"]], float(raw["other"]), raw.get("fit", {}))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{p}: a latency model with a missing or malformed entry ({e})") from None

    def check(self, wanted: LatencySettings, source: str = "the latency model") -> None:
        """Refuses to predict for other settings: another device, thread count, batch size,
        resolution or compile mode (one line naming each difference)."""
        differ = self.settings.differences(wanted)
        if differ:
            raise ValueError(f"{source} was measured with other settings ({'; '.join(differ)}); measure one for these "
                             "(scalenet latency-model)")


# ---------------------------------------------------------------------------- measuring
def _fused_block(spec: BlockSpec, scales: Sequence[int], device: torch.device) -> nn.Module:
    block = SABottleneck(spec, scales)
    for m in block.modules():  # non-trivial BN statistics, as in a trained network
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    return fuse(nn.Sequential(block)).to(device)


def _timer(settings: LatencySettings):
    device = torch.device(settings.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def prepare(module: nn.Module, shape: tuple[int, ...]):
        x = torch.randn(*shape, device=device).contiguous(memory_format=torch.channels_last)
        module = module.to(memory_format=torch.channels_last).eval()
        run = module
        if settings.compile:  # inductor with freezing, as scalenet bench compiles for inference
            raise_recompile_limit(64)  # every split is another graph of the same module class: dynamo's
            run = torch.compile(module, options={"freezing": True})  # default limit (8) would run later ones eagerly

        def call() -> None:
            with torch.inference_mode():
                run(x)
        return call

    return prepare, sync


def _representative(structure: Structure, stage: int) -> BlockSpec:
    """A stage's second block (stride 1, in = out channels), or its only one."""
    specs = [s for s in structure.blocks() if s.stage == stage]
    return specs[1] if len(specs) > 1 else specs[0]


def _configs(planes: int, n_scales: int, count: int, rng: random.Random) -> list[tuple[int, ...]]:
    """Channel counts per scale spanning 0 to about twice the planes; uniform splits first."""
    top = 2 * planes
    out = [tuple([planes // n_scales] * n_scales), tuple([top // n_scales] * n_scales)]
    out += [tuple(planes if i == j else 0 for i in range(n_scales)) for j in range(n_scales)]  # single branches
    while len(out) < count:
        c = tuple(rng.choice([0, rng.randint(1, top // 2), rng.randint(top // 2, top)]) for _ in range(n_scales))
        if any(c):
            out.append(c)
    return out[:count]


def measure_latency_model(
    reference: Structure,
    settings: LatencySettings,
    *,
    configs: int = 14,
    repeats: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> LatencyModel:
    """Times one block of each stage of ``reference``'s layout at ``configs`` channel splits
    (``repeats`` interleaved rounds, median), fits each stage's costs, and calibrates
    ``other`` on ``reference`` itself (timed as a whole, fused)."""
    if configs < 2 + 2 * len(reference.scales):
        raise ValueError(f"configs must be at least {2 + 2 * len(reference.scales)} (the fit has "
                         f"{1 + 2 * len(reference.scales)} unknowns per stage), got {configs}")
    if settings.device == "cpu":
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    prepare, sync = _timer(settings)
    rng = random.Random(seed)
    sides = reference.stage_sides(settings.image_size)
    stages, points = [], []
    for stage in range(len(reference.layers)):
        spec = _representative(reference, stage)
        splits = _configs(spec.planes, len(reference.scales), configs, rng)
        runners = {}
        for c in splits:
            block = _fused_block(dataclasses.replace(spec, channels=c), reference.scales, device)
            side = sides[stage] * spec.stride  # a stride-2 block pools its input first
            runners[c] = prepare(block, (settings.batch_size, spec.in_channels, side, side))
        times = interleaved({f"{stage}:{c}": r for c, r in runners.items()}, repeats, sync=sync,
                            progress=f"stage {stage + 1}: {len(splits)} blocks" if progress else None)
        ms = [1e3 * float(np.median(times[f"{stage}:{c}"])) for c in splits]
        cost, residuals = _fit(splits, ms)
        stages.append(cost)
        points.append({"stage": stage, "channels": [list(c) for c in splits], "ms": ms, "residual_ms": residuals})
    model = LatencyModel(settings, tuple(reference.scales), tuple(reference.layers), reference.width, reference.stem,
                         stages, 0.0, {"points": points, "reference": reference.name})
    measured = time_networks({"reference": reference}, settings, repeats, progress)["reference"]
    model.other = measured - model.predict(reference)
    model.fit["reference_ms"] = measured
    return model


def _fit(splits: Sequence[Sequence[int]], ms: Sequence[float]) -> tuple[StageCost, list[float]]:
    """Least squares of ``ms`` on [1, branch present per scale, neurons per scale]; negative
    fixed or per-neuron costs (noise on a cheap term) are set to 0 and the rest refitted."""
    n = len(splits[0])
    x = np.array([[1.0] + [float(c > 0) for c in s] + [float(c) for c in s] for s in splits])
    y = np.array(ms)
    free = list(range(x.shape[1]))
    while True:
        coef = np.zeros(x.shape[1])
        coef[free] = np.linalg.lstsq(x[:, free], y, rcond=None)[0]
        negative = [i for i in free if i > 0 and coef[i] < 0]
        if not negative:
            break
        free = [i for i in free if i not in negative]
    residuals = (y - x @ coef).tolist()
    return StageCost(float(coef[0]), coef[1 : 1 + n].tolist(), coef[1 + n :].tolist()), residuals


def time_networks(structures: dict[str, Structure], settings: LatencySettings, repeats: int = 5,
                  progress: bool = False) -> dict[str, float]:
    """Median milliseconds of a fused forward pass of each structure, timed in interleaved rounds."""
    if settings.device == "cpu":
        torch.set_num_threads(settings.threads)
    prepare, sync = _timer(settings)
    shape = (settings.batch_size, 3, settings.image_size, settings.image_size)
    runners = {k: prepare(fuse(create_model(s)).to(settings.device), shape) for k, s in structures.items()}
    times = interleaved(runners, repeats, sync=sync, progress="whole networks" if progress else None)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def prediction_errors(model: LatencyModel, structures: dict[str, Structure], repeats: int = 5,
                      progress: bool = False, calibrate_on: str | None = None) -> list[dict[str, Any]]:
    """Measured against predicted milliseconds for each structure, with the relative error.

    ``calibrate_on`` (one of the names): first set ``model.other`` from that network's latency
    measured in the same interleaved rounds, so that the machine's drift between the model's
    measurement and this one (several percent within minutes on a shared machine) does not
    count as the model's error; that network's own error is then 0 by construction."""
    measured = time_networks(structures, model.settings, repeats, progress)
    if calibrate_on is not None:
        model.other = measured[calibrate_on] - (model.predict(structures[calibrate_on]) - model.other)
    rows = []
    for name, structure in structures.items():
        predicted = model.predict(structure)
        rows.append({"name": name, "measured_ms": measured[name], "predicted_ms": predicted,
                     "error": predicted / measured[name] - 1, "calibration": name == calibrate_on})
    return rows


# ---------------------------------------------------------------------------- the cache
def cache_dir() -> Path:
    """``$SCALENET_CACHE`` or ``~/.cache/scalenet`` (``$XDG_CACHE_HOME`` respected), ``/latency``."""
    return Path(os.environ.get("SCALENET_CACHE") or cache_root()) / "latency"


def cache_path(settings: LatencySettings, layout: Structure) -> Path:
    """The cached model's file, named by the device, the settings and the layout, e.g.
    ``amd-epyc-2t-b16-224px-eager-imagenet-w64-4stages-s1.2.4.7.json``."""
    where = device_slug(settings.device_name) + (f"-{settings.threads}t" if settings.threads else "")
    mode = "compiled" if settings.compile else "eager"
    shape = f"{layout.stem}-w{layout.width}-{len(layout.layers)}stages-s{'.'.join(map(str, layout.scales))}"
    return cache_dir() / f"{where}-b{settings.batch_size}-{settings.image_size}px-{mode}-{shape}.json"


def reference_for(layout: Structure) -> Structure:
    """The network that calibrates a model of ``layout``: the published ScaleNet-50 for its own
    layout, else the uniform split of the ResNet width in ``layout``'s stages."""
    published = resolve_structure("scalenet50")
    if (published.stem, published.width, tuple(published.scales), len(published.layers)) == (
            layout.stem, layout.width, tuple(layout.scales), len(layout.layers)):
        return published
    planes = [layout.width * 2**i for i in range(len(layout.layers))]
    return Structure.uniform(layout.layers, [max(1, p // len(layout.scales)) for p in planes], scales=layout.scales,
                             stem=layout.stem, width=layout.width, image_size=layout.image_size, name="uniform")


def cached_model(layout: Structure, settings: LatencySettings, *, progress: bool = True,
                 log=print) -> LatencyModel:
    """The cached cost model for ``settings`` and ``layout``'s layout, measured (minutes) and
    cached when there is none yet."""
    path = cache_path(settings, layout)
    if path.exists():
        model = LatencyModel.load(path)
        model.check(settings, str(path))
        model.check_structure(layout)
        return model
    log(f"measuring a latency model for {settings.device_name}, batch {settings.batch_size}, {settings.image_size} px, "
        f"{'compiled' if settings.compile else 'eager'} (once; cached in {path})")
    model = measure_latency_model(reference_for(layout), settings, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def requested_model(path: str | os.PathLike | None, wanted: LatencySettings) -> "LatencyModel | LatencySettings":
    """What a latency budget is predicted with: the cost model in ``path``, checked against the
    ``wanted`` settings, or (no file) those settings, whose cached model
    :func:`latency_model_for` finds for the supernet's layout."""
    if path is None:
        return wanted
    model = LatencyModel.load(path)
    model.check(wanted, path)
    return model


def latency_model_for(model, supernet, progress: bool = True):
    """``model`` as a LatencyModel for ``supernet``'s layout: given (checked against the layout), or
    (``LatencySettings``) the cached one for those settings, measured when missing."""
    if isinstance(model, LatencySettings):
        return cached_model(supernet, model, progress=progress)
    if model is not None:
        model.check_structure(supernet)
    return model


def block_latencies(model: LatencyModel, structure: Structure, source: str | os.PathLike,
                    image_size: int | None = None) -> dict[str, Any]:
    """Each SA block's predicted milliseconds under ``model`` (read from ``source``), the rest of
    the network and the total, for ``structure`` at the model's image size (``image_size``, if
    given, must be that size)."""
    size = image_size or model.settings.image_size
    if size != model.settings.image_size:
        raise SettingError(f"{source} was measured at {model.settings.image_size} px; {{image_size}} {size} differs",
                           "image_size")
    blocks = model.per_block(structure)
    return {"model": str(source), "settings": dataclasses.asdict(model.settings),
            "blocks": [{"block": name, "ms": ms} for name, ms in blocks], "other_ms": model.other,
            "total_ms": model.predict(structure)}


def format_block_latencies(latency: dict[str, Any]) -> str:
    """:func:`block_latencies` as a table."""
    s = latency["settings"]
    where = f"{s['device_name']}" + (f", {s['threads']} threads" if s["threads"] else "")
    lines = ["", f"predicted latency ({latency['model']}: {where}, batch {s['batch_size']}, {s['image_size']} px"
             f"{', compiled' if s['compile'] else ''})", "", "block      |      ms"]
    lines += [f"{b['block']:<10} | {b['ms']:7.1f}" for b in latency["blocks"]]
    lines += [f"{'other':<10} | {latency['other_ms']:7.1f}   (stem, shortcuts, head)",
              f"{'total':<10} | {latency['total_ms']:7.1f}"]
    return "\n".join(lines)
