"""``scalenet train``, ``eval`` and ``predict``: classification runs and their checkpoints."""

from __future__ import annotations

import argparse
import json
import sys

from ..factory import resolve_structure
from ..predict import format_predictions, image_paths, load_predictor
from ..training import evaluate_checkpoint, is_main_process, train
from .options import (add_fault_tolerance_arguments, add_training_arguments, data_from, int_list, nonneg_int,
                      positive_int, train_config)

__all__ = ["COMMANDS"]


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="NAME|PATH", help="a published model name or a structure JSON")
    p.add_argument("--data", required=True, metavar="DIR|fashion-mnist", help="an ImageFolder directory or a built-in data set")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory: checkpoints, metrics.jsonl, TensorBoard logs")
    add_training_arguments(p)
    add_fault_tolerance_arguments(p)
    p.add_argument("--layers", type=int_list, default=None, help="stage depths for a bare-list structure file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_train(args: argparse.Namespace) -> int:
    structure = resolve_structure(args.model, layers=args.layers)
    cfg = train_config(args)
    result = train(structure, data_from(args, cfg.seed), cfg, args.out, resume=args.resume)
    if result.metrics and is_main_process():
        best = max(result.metrics, key=lambda r: r["val_top1"])
        print(
            f"{structure.name or 'model'}: val top-1 {100 * result.final['val_top1']:.2f}% after epoch "
            f"{result.final['epoch']} (best {100 * best['val_top1']:.2f}% at epoch {best['epoch']}); run in {args.out}"
        )
    return 0


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by scalenet train (last.pt/best.pt)")
    p.add_argument("--data", required=True, metavar="DIR|fashion-mnist")
    p.add_argument("--image-size", type=positive_int, default=None, help="default: the training image size")
    p.add_argument("--batch-size", type=positive_int, default=256, help="default 256")
    p.add_argument("--workers", type=nonneg_int, default=0, help="data-loading processes (default 0)")
    p.add_argument("--val-subset", type=positive_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help='print {"top1": ..., "top5": ...} as fractions')


def cmd_eval(args: argparse.Namespace) -> int:
    out = evaluate_checkpoint(args.checkpoint, args.data, image_size=args.image_size, batch_size=args.batch_size,
                              workers=args.workers, val_subset=args.val_subset)
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if k != "data"}))
    else:
        print(
            f"{args.checkpoint} on {out['data']} ({out['images']} images): top-1 {100 * out['top1']:.2f}% "
            f"(error {100 * out['top1_err']:.2f}%), top-5 {100 * out['top5']:.2f}% (error {100 * out['top5_err']:.2f}%)"
        )
    return 0


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and folders (searched recursively)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by scalenet train (best.pt/last.pt)")
    p.add_argument("--topk", type=positive_int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--json", action="store_true", help='one JSON object per line: {"path", "top": [{"class", "index", "prob"}]}')
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_predict(args: argparse.Namespace) -> int:
    paths = image_paths(args.inputs)
    predictor = load_predictor(args.checkpoint)
    records = list(predictor.predict(paths, topk=args.topk, batch_size=args.batch_size,
                                     progress=not args.no_progress and len(paths) > 1))
    skipped = [r for r in records if r.get("skipped")]
    if len(skipped) == len(records):
        raise ValueError(f"none of the {len(records)} file(s) is a readable image (first: {records[0]['path']})")
    if args.json:
        for r in records:
            if not r.get("skipped"):
                print(json.dumps(r))
    else:
        print(format_predictions(records))
    if skipped:
        print(f"note: skipped {len(skipped)} unreadable or non-image file(s), e.g. {skipped[0]['path']}", file=sys.stderr)
    return 0


COMMANDS = {
    "train": ("train a model, from scratch or from weights (--init); torchrun -m scalenet train ... for DDP",
              add_train_arguments, cmd_train),
    "eval": ("top-1/top-5 of a training checkpoint", add_eval_arguments, cmd_eval),
    "predict": ("classify images with a training checkpoint: top-k class names and probabilities", add_predict_arguments,
                cmd_predict),
}
