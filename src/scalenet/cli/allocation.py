"""``scalenet allocate``, ``study`` and ``demo``: learning an allocation and weighing it."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..agreement import format_agreement
from ..allocation import (COMBINES, DEFAULT_COMBINE, DEFAULT_REPEATS, SUPERNET_IMAGES, Selection, allocate, budget_from,
                          runs_dir_for, supernet_epochs, supernet_for, select_runs)
from ..allocation.workflow import check_outputs, latency_budget, require_supernet_runs, train_result, trained_supernets
from ..demo import run_demo
from ..fileio import check_output_file
from ..report import format_stage_summary, format_study
from ..study import ARMS, LATENCY_ARMS, STUDY_RECIPE, StudyConfig, run_study
from ..training import TrainConfig, is_main_process, under_torchrun
from .options import (Recorder, add_augment_argument, add_force, add_old_spelling, add_recipe_arguments,
                      add_training_arguments, config_from, data_from, default, int_list, names, nonneg_float,
                      positive_float, positive_int, refuse_given, resume, train_config)

__all__ = ["COMMANDS"]


# ---------------------------------------------------------------------------- allocate
def add_allocate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, metavar="DIR|fashion-mnist",
                   help="an ImageFolder directory or a built-in data set (required unless --scores)")
    p.add_argument("--scores", default=None, metavar="X.scores.json",
                   help="select again from an earlier allocation's supernets (its sidecar), without training")
    p.add_argument("--from-runs", nargs="+", default=None, metavar="RUN_DIR",
                   help="score supernets trained elsewhere (scalenet train --model supernet.json) and select")
    p.add_argument("--out", default=None, metavar="structure.json",
                   help="the structure file to write (with OUT.scores.json and the chart OUT.png beside it; the "
                        "supernets train in OUT.runs/supernet-NNNN)")
    write = p.add_argument("--write-supernet", default=None, metavar="supernet.json",
                           help="only write the supernet structure for --data and the layout (to train with scalenet "
                                "train anywhere)")
    add_old_spelling(p, "--write-seed", write)
    add_force(p, "the structure, its scores file and its chart")
    p.add_argument("--resume", nargs="?", const=True, default=False, type=resume, metavar="auto",
                   help="continue the supernet runs in OUT.runs: finished ones are scored, not retrained, the "
                        "interrupted "
                        "one continues from its newest checkpoint; as in train, '--resume' needs runs there and "
                        "'--resume auto' starts them when there are none (one command for the first start and every "
                        "restart)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--width-mult", type=positive_float, default=None,
                        help="neurons kept per block, times the ResNet width (default 1.0)")
    budget.add_argument("--macs", type=positive_int, default=None, help="MACs target for the whole network (met within 1%%)")
    budget.add_argument("--latency-ms", type=positive_float, default=None, metavar="T",
                        help="predicted latency target on the device (never above T, within 1%% below)")
    p.add_argument("--multiple-of", type=int, default=None, metavar="M",
                   help="round each branch's neurons to a multiple of M (M >= 1; a branch may round to 0 neurons) "
                        "within the budget (default: no rounding)")
    p.add_argument("--alpha", type=nonneg_float, default=0.0,
                   help="keep neurons by score / cost^alpha, the cost of a neuron under the budget: its MACs for "
                        "--width-mult and --macs, its predicted ms for --latency-ms (default 0, the paper's ranking)")
    p.add_argument("--scope", choices=["block", "global"], default="block", help="rank per block (the paper) or across blocks (default block)")
    p.add_argument("--combine", choices=list(COMBINES), default=DEFAULT_COMBINE,
                   help=f"mean: average the runs' own allocations; union: rank all runs' neurons together per block "
                        f"and scale (default {DEFAULT_COMBINE})")
    p.add_argument("--bare", action="store_true", help="write the release's bare-list format")
    p.add_argument("--then-train", type=positive_int, default=None, metavar="EPOCHS", help="then train the result from scratch")
    p.add_argument("--run-dir", default=None, help="run directory for --then-train (default: OUT_run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    lat = Recorder(p.add_argument_group("latency budget", "the device and settings --latency-ms is for; the cost model "
                                        "is --latency-model, or the cached one for these settings (measured once when "
                                        "missing)"))
    lat.add_argument("--latency-model", default=None, metavar="MODEL.json", help="a cost model from scalenet latency-model")
    lat.add_argument("--latency-device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    lat.add_argument("--latency-threads", type=positive_int, default=None, help="CPU threads (default: torch's)")
    lat.add_argument("--latency-batch-size", type=positive_int, default=16, help="default 16")
    lat.add_argument("--latency-image-size", type=positive_int, default=None, help="default: the data's")
    lat.add_argument("--latency-compile", action="store_true", help="latency of torch.compile'd networks")
    supernet = Recorder(p.add_argument_group("supernets", "their layout and training (with --scores or --from-runs "
                                             "they were trained already)"))
    supernet.add_argument("--layers", type=int_list, default=None, help="blocks per stage (default by image size)")
    supernet.add_argument("--width", type=positive_int, default=None, help="planes of stage 1 (default by image size)")
    supernet.add_argument("--scales", type=int_list, default=[1, 2, 4, 7], help="pooling factors (default 1,2,4,7)")
    width = supernet.add_argument("--supernet-width", type=positive_int, default=None,
                                  help="supernet neurons per scale (default: the block's planes)")
    add_old_spelling(p, "--seed-width", width)
    supernet.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                          help=f"supernets to train (seeds SEED to SEED+N-1) and combine (default {DEFAULT_REPEATS})")
    supernet.add_argument("--sparsity", type=nonneg_float, default=0.0,
                          help="L1 weight on the SA-branch BN scales while the supernet trains (default 0)")
    supernet.add_argument("--jobs", type=positive_int, default=None,
                          help="supernets trained at once: each with cores/jobs threads, or with CUDA each on a GPU of "
                               "its own (default: one per CPU core, or one per GPU)")
    supernet.add_argument("--save-every", type=positive_float, default=None, metavar="MINUTES",
                          help="also checkpoint inside an epoch after this many minutes (default 15)")
    add_training_arguments(supernet, epochs=f"the fewest that show each supernet {SUPERNET_IMAGES:,} images")
    p.set_defaults(supernet_options=tuple(supernet.dests), latency_options=tuple(lat.dests))


def cmd_allocate(args: argparse.Namespace) -> int:
    sources = [k for k in ("data", "scores", "from_runs") if getattr(args, k) is not None]
    if len(sources) != 1:
        raise ValueError("give --data DIR (train supernets), --scores X.scores.json or --from-runs RUN_DIR... "
                         "(select from trained ones)")
    if args.write_supernet is not None:
        return _write_supernet(args)
    if args.out is None:
        raise ValueError("give --out structure.json (or --write-supernet supernet.json to write the supernet "
                         "structure only)")
    if args.data is None:
        if args.then_train:
            raise ValueError("--then-train needs --data (the data to train the result on)")
        source = "--scores" if args.scores is not None else "--from-runs"
        refuse_given(args, [*args.supernet_options, "resume"], f"with {source}, which selects from supernets trained "
                                                           "already (train anew with --data to change them)")
    if args.latency_ms is None:
        refuse_given(args, args.latency_options, "without --latency-ms (they say what a latency budget is predicted for)")
    if args.then_train is None:
        refuse_given(args, ["run_dir"], "without --then-train")
    elif under_torchrun():
        raise ValueError("--then-train does not apply under torchrun; train the result with torchrun -m scalenet "
                         "train --model OUT.json")
    out, run_dir = check_outputs(args.out, force=args.force, then_train=bool(args.then_train), run_dir=args.run_dir)
    if args.resume is True:
        require_supernet_runs(out, args.repeats)
    selection = Selection(scope=args.scope, alpha=args.alpha, combine=args.combine, multiple_of=args.multiple_of)
    if args.data is None:
        runs, supernet, training = trained_supernets(scores=args.scores, runs=args.from_runs)
        budget = _budget(args, supernet.image_size).resolved(supernet, progress=not args.no_progress)
        result = select_runs(runs, supernet, budget, training, selection, name=out.stem)
    else:
        data = data_from(args, args.seed if args.seed is not None else 0)
        cfg = train_config(args, epochs=supernet_epochs(len(data.train)))
        result = allocate(data, _budget(args, data.image_size), selection, layers=args.layers, width=args.width,
                          scales=args.scales, supernet_width=args.supernet_width, sparsity=args.sparsity,
                          repeats=args.repeats,
                          jobs=args.jobs, train_config=cfg, runs=runs_dir_for(out), resume=bool(args.resume),
                          name=out.stem)
    if result is None:  # a rank other than 0 under torchrun: rank 0 selects and writes
        return 0
    _report(result, result.save(out, bare=args.bare), out)
    if args.then_train:
        trained = train_result(result, data, cfg, args.then_train, run_dir)
        print(f"{out.stem}: val top-1 {100 * trained.final['val_top1']:.2f}% after {args.then_train} epochs; "
              f"run in {run_dir}")
    return 0


def _budget(args: argparse.Namespace, image_size: int):
    """The budget the options ask for (default ``--width-mult 1``)."""
    if args.latency_ms is None:
        return budget_from(1.0 if args.width_mult is None and args.macs is None else args.width_mult, args.macs)
    return latency_budget(args.latency_ms, args.latency_image_size or image_size, model=args.latency_model,
                          device=args.latency_device, threads=args.latency_threads,
                          batch_size=args.latency_batch_size, compile=args.latency_compile)


def _write_supernet(args: argparse.Namespace) -> int:
    """``allocate --write-supernet supernet.json``: the supernet structure for the data and layout, nothing trained."""
    if args.data is None:
        raise ValueError("--write-supernet needs --data (the supernet's image size and layout follow from it)")
    refuse_given(args, ["out", "scores", "resume", "then_train", "run_dir", "width_mult", "macs", "latency_ms",
                        "multiple_of", "alpha", "scope", "combine", "repeats", "jobs", "sparsity", "bare"],
                 "with --write-supernet, which only writes the supernet structure")
    out = check_output_file(args.write_supernet, "--write-supernet", "supernet.json", force=args.force)
    data = data_from(args, args.seed if args.seed is not None else 0)
    supernet = supernet_for(data.image_size, layers=args.layers, width=args.width, scales=args.scales,
                            supernet_width=args.supernet_width)
    supernet.save(out)
    print(f"{out}: supernet structure for {data.name} ({data.image_size} px, {data.num_classes} classes), "
          f"{supernet.macs(None, data.num_classes, data.in_chans):,} MACs; train it with scalenet train --model {out} "
          f"--data {args.data} --seed S, then scalenet allocate --from-runs RUN_DIR... --out structure.json")
    return 0


def _report(result, paths: dict[str, Path], out: Path) -> None:
    s = result.structure
    nc, ic = result.training.num_classes, result.training.in_chans
    print(format_stage_summary(s))
    print(format_agreement(result.agreement))
    predicted = f", predicted {result.predicted:,.1f} ms" if result.unit == "ms" else ""
    print(
        f"{out}: {s.macs(None, nc, ic):,} MACs, {s.params(nc, ic):,} params{predicted} (supernet "
        f"{result.supernet.macs(None, nc, ic):,} MACs); scores in {paths['sidecar']}, chart in {paths['chart']}"
    )


# ---------------------------------------------------------------------------- study
def add_study_arguments(p: argparse.ArgumentParser) -> None:
    d = lambda name: getattr(STUDY_RECIPE, name) if hasattr(STUDY_RECIPE, name) else default(StudyConfig, name)  # noqa: E731
    p.add_argument("--data", required=True, metavar="DIR|fashion-mnist", help="an ImageFolder directory or a built-in data set")
    p.add_argument("--out", required=True, metavar="STUDY_DIR", help="study directory (an unfinished study there resumes)")
    p.add_argument("--arms", type=_arm_names, default=None,
                   help=f"comma-separated subset of {','.join(ARMS + LATENCY_ARMS)} (default: {','.join(ARMS)})")
    p.add_argument("--seeds", type=int, default=None, help=f"training seeds per arm, at least 2 (default {d('seeds')})")
    p.add_argument("--seed", type=int, default=None, help=f"first seed (default {d('seed')})")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--width-mult", type=positive_float, default=None, help="the learned arm's budget (default 1.0)")
    budget.add_argument("--macs", type=positive_int, default=None, help="MACs of every arm (within 1%%)")
    p.add_argument("--layers", type=int_list, default=None, help="blocks per stage (default by image size)")
    p.add_argument("--width", type=positive_int, default=None, help="planes of stage 1 (default by image size)")
    p.add_argument("--image-size", type=positive_int, default=None, help="default: from the data")
    add_recipe_arguments(p, STUDY_RECIPE, epochs=f"{STUDY_RECIPE.epochs}, for every run")
    add_augment_argument(p, STUDY_RECIPE.augment)
    p.add_argument("--train-subset", type=positive_int, default=None, help="train every run on a random subset of N images")
    p.add_argument("--val-subset", type=positive_int, default=None,
                   help=f"per-epoch validation images (default {d('val_subset')}; the final test uses all)")
    p.add_argument("--repeats", type=positive_int, default=None, help="supernets of the learned arm's allocation")
    epochs = p.add_argument("--supernet-epochs", type=positive_int, default=None,
                            help="epochs of each supernet (default: as scalenet allocate, one per 8,000 images)")
    add_old_spelling(p, "--seed-epochs", epochs)
    subset = p.add_argument("--supernet-subset", type=positive_int, default=None,
                            help=f"images for the supernets (default {d('supernet_subset')})")
    add_old_spelling(p, "--seed-subset", subset)
    p.add_argument("--latency-model", default=None, metavar="MODEL.json",
                   help="match the arms in latency, predicted by this cost model (scalenet latency-model) and measured, "
                        "not in MACs")
    p.add_argument("--latency-ms", type=positive_float, default=None, help="every arm's latency (default: the learned arm's)")
    p.add_argument("--latency-alpha", type=nonneg_float, default=None,
                   help="the latency arm keeps neurons by score / ms^alpha (default 1.0)")
    p.add_argument("--latency-tolerance", type=positive_float, default=None, metavar="FRACTION",
                   help="every arm's measured latency lands within this of the target, its budget calibrated "
                        "(default 0.05)")
    p.add_argument("--jobs", type=positive_int, default=None,
                   help="trainings run at once: each with cores/jobs threads, or with CUDA each on a GPU of its own "
                        "(default: one per CPU core, or one per GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _arm_names(text: str) -> list[str]:
    found = names(text)
    if not found:
        raise argparse.ArgumentTypeError(f"expected comma-separated arm names like learned,uniform, got {text!r}")
    return found


def cmd_study(args: argparse.Namespace) -> int:
    recipe = config_from(TrainConfig, args, **{**dataclasses.asdict(STUDY_RECIPE), "progress": not args.no_progress})
    cfg = config_from(StudyConfig, args, exclude=("data", "arms"), data=args.data, arms=tuple(args.arms or ARMS),
                      train=recipe)
    report = run_study(cfg, args.out)
    if is_main_process():  # under torchrun rank 0 writes and reports
        print(format_study(report))
        print(f"written: {Path(args.out) / 'study.json'}, study.md, study.png")
    return 0


# ---------------------------------------------------------------------------- demo
def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=["quick", "full"], default="quick",
                   help="quick: about 15 minutes on a 2-core CPU (default); full: long, meant for a GPU")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo; an earlier run there is moved aside)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(args.out, profile=args.profile, seed=args.seed, progress=not args.no_progress)
    return 0


COMMANDS = {
    "allocate": ("learn each block's neurons per scale from data (train a supernet, rank |gamma|)",
                 add_allocate_arguments,
                 cmd_allocate),
    "study": ("is the allocation worth it? learned vs uniform, random, ResNet and a heuristic at matched MACs, "
              "over seeds", add_study_arguments, cmd_study),
    "demo": ("the whole pipeline on Fashion-MNIST: allocate, train, compare, report", add_demo_arguments, cmd_demo),
}
