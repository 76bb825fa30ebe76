"""The paper's speed test in TensorFlow, where it was made, and its deployment advice checked.

The release times "empty models" of ResNet-50, SE-ResNet-50, ResNeXt-50 and ScaleNet-50 in a
TensorFlow 1 graph (batch 16, 224 px) and advises deploying ScaleNets on TensorFlow because static
graphs run the branches in parallel. This script times, in TensorFlow graph mode (``tf.function``)
with and without XLA (``jit_compile``), at batch 16 and batch 1, 224 px, fp32, interleaved, as
ratios to ResNet-50 in the same process:

- ``resnet50``, ``seresnet50``, ``resnext50_32x4d``: Keras models built here in torchvision's and
  timm's layout (stride in the 3x3 conv; SE after the last BN; 32 groups of 4 in one grouped
  ``Conv2D``). Their conv and dense MACs are checked equal to the PyTorch models' before timing;
- ``scalenet50``: :mod:`scalenet.keras`, the released network (its MACs checked likewise);
- ``resnet50 (release)`` and ``scalenet50 (release)``: the two models as the release's
  ``tensorflow/test_speed.py`` built them: slim's ``resnet_v1_50`` and the release's
  ``scale_resnet_v1_50`` called without slim's arg scope, so every conv has a bias and a ReLU
  (none where the code sets ``activation_fn=None``) and no BN; pools default to VALID (the stem's
  3x3/2 pool gives 55 px in ResNet, the ScaleNet stem pools 2x2/2); a stage's stride sits in its
  last unit; ScaleNet's conv1 runs at the unit's input size and is max-pooled by the stride, its
  branch convs have no activation, are resized back bilinearly and concatenated, and conv3
  follows without a ReLU. The channel table is the released ScaleNet-50's.

The paper's claim is measured directly: each setting runs in its own process, once with
``inter_op_parallelism_threads`` 1 (one op at a time) and once with N, the number of cores
(TensorFlow's default, independent ops, such as the branches, run concurrently); the intra-op
pool has N threads in both. A JAX process times ResNet-50 and ScaleNet-50 under ``jax.jit``
(``stateless_call``).

    python benchmarks/tf_speed.py [--repeats 10] [--repeats-b1 30] [--device cpu|gpu] [--force]

Writes benchmarks/results/tf-speed-<device>.json and .md (``--out-dir`` elsewhere). Random
He-normal weights; BN statistics at their defaults (inference cost does not depend on them).
Unlike the release (which fed a float64 NumPy array to ``sess.run``), the input is a float32 tensor
already on the device, so the copy is not timed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch  # before TensorFlow: the other order crashes (scalenet.compat.check_import_order)

from scalenet.devices import device_name, device_slug
from scalenet.fileio import atomic_write_text
from scalenet.structure import Structure
from scalenet.timing import interleaved, summarize

SIDE = 224
REFERENCE = "resnet50"
MODELS = ("resnet50", "seresnet50", "resnext50_32x4d", "scalenet50", "resnet50 (release)", "scalenet50 (release)")
JAX_MODELS = ("resnet50", "scalenet50")
#: The models whose MACs must equal their PyTorch twin's (the release forms have none).
CHECKED = ("resnet50", "seresnet50", "resnext50_32x4d", "scalenet50")


# ---------------------------------------------------------------------------------------- builders
def _builders() -> dict[str, Callable[[], Any]]:
    import keras
    from keras import layers, ops

    from scalenet.keras.model import BilinearResize, build

    def conv(x, filters, kernel, stride=1, groups=1, bias=False, act=None):
        """PyTorch's padding (k // 2 on each side), as ZeroPadding2D + a valid conv."""
        if kernel > 1:
            x = layers.ZeroPadding2D(kernel // 2)(x)
        return layers.Conv2D(filters, kernel, strides=stride, groups=groups, use_bias=bias, activation=act)(x)

    def bn(x):
        return layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)

    def torchvision_resnet(kind: str) -> keras.Model:
        """ResNet-50 (torchvision), SE-ResNet-50 (timm) or ResNeXt-50 32x4d (torchvision)."""
        inputs = keras.Input((SIDE, SIDE, 3))
        x = layers.ReLU()(bn(conv(inputs, 64, 7, 2)))
        x = layers.MaxPooling2D(3, 2)(layers.ZeroPadding2D(1)(x))  # after a ReLU: zeros pad like -inf
        channels = 64
        for stage, (units, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
            for unit in range(units):
                stride = 2 if stage > 0 and unit == 0 else 1
                width, groups = (planes * 2, 32) if kind == "next" else (planes, 1)
                out = planes * 4
                y = layers.ReLU()(bn(conv(x, width, 1)))
                y = layers.ReLU()(bn(conv(y, width, 3, stride, groups)))
                y = bn(conv(y, out, 1))
                if kind == "se":  # timm's SEModule: 1x1 convs with bias, ReLU, sigmoid gate
                    s = layers.GlobalAveragePooling2D(keepdims=True)(y)
                    s = conv(s, out // 16, 1, bias=True, act="relu")
                    y = ops.multiply(y, conv(s, out, 1, bias=True, act="sigmoid"))
                shortcut = x if stride == 1 and channels == out else bn(conv(x, out, 1, stride))
                x = layers.ReLU()(layers.Add()([y, shortcut]))
                channels = out
        x = layers.Dense(1000)(layers.GlobalAveragePooling2D()(x))
        return keras.Model(inputs, x, name=kind)

    def slim_conv(x, filters, kernel, stride=1, act="relu"):
        """slim.conv2d outside an arg scope (bias, ReLU, no BN); strided k>1 as conv2d_same."""
        if stride > 1 and kernel > 1:
            pad = kernel - 1
            x = layers.ZeroPadding2D(((pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2)))(x)
            return layers.Conv2D(filters, kernel, strides=stride, padding="valid", activation=act)(x)
        return layers.Conv2D(filters, kernel, strides=stride, padding="same", activation=act)(x)

    def release(kind: str) -> keras.Model:
        """The release's tensorflow/test_speed.py models ``res`` and ``scale``."""
        structure = Structure.published("scalenet50")
        assert structure.scales == (1, 2, 4, 7) and structure.layers == (3, 4, 6, 3)
        specs = list(structure.blocks())
        inputs = keras.Input((SIDE, SIDE, 3))
        x = slim_conv(inputs, 64, 7, 2)
        x = layers.MaxPooling2D(2, 2)(x) if kind == "scale" else layers.MaxPooling2D(3, 2)(x)
        channels, i = 64, 0
        for base, units, block_stride in ((64, 3, 2), (128, 4, 2), (256, 6, 2), (512, 3, 1)):
            for unit in range(units):
                stride = block_stride if unit == units - 1 else 1  # slim: the stride in the last unit
                depth = base * 4
                if depth == channels:
                    shortcut = layers.MaxPooling2D(1, stride)(x) if stride > 1 else x
                else:
                    shortcut = slim_conv(x, depth, 1, stride, act=None)
                r = slim_conv(x, base, 1)
                if kind == "res":
                    r = slim_conv(r, base, 3, stride)
                else:
                    if stride > 1:
                        r = layers.MaxPooling2D(stride, stride)(r)
                    side = int(r.shape[1])
                    branches = []
                    for scale, c in zip(structure.scales, specs[i].channels):
                        if c == 0:
                            continue
                        b = layers.MaxPooling2D(scale, scale)(r) if scale > 1 else r
                        b = slim_conv(b, c, 3, act=None)
                        if scale > 1:
                            b = BilinearResize((side, side))(b)
                        branches.append(b)
                    r = layers.Concatenate()(branches)
                r = slim_conv(r, depth, 1, act=None)
                x = layers.ReLU()(layers.Add()([shortcut, r]))
                channels, i = depth, i + 1
        x = layers.Dense(1000)(layers.GlobalAveragePooling2D()(x))
        return keras.Model(inputs, x, name=f"{kind}_release")

    return {
        "resnet50": lambda: torchvision_resnet("res"),
        "seresnet50": lambda: torchvision_resnet("se"),
        "resnext50_32x4d": lambda: torchvision_resnet("next"),
        "scalenet50": lambda: build(Structure.published("scalenet50"), image_size=(SIDE, SIDE)).model,
        "resnet50 (release)": lambda: release("res"),
        "scalenet50 (release)": lambda: release("scale"),
    }


def keras_macs(model: Any) -> int:
    """Multiply-accumulates of the convs and dense layers (what FlopCounterMode counts in PyTorch)."""
    from keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, (layers.Conv2D, layers.Dense)):
            positions = 1
            for d in layer.output.shape[1:-1]:
                positions *= int(d)
            total += positions * math.prod(int(d) for d in layer.kernel.shape)
    return total


def randomize(model: Any, seed: int = 0) -> None:
    """He-normal kernels, zero biases: the built models start at zero (or Keras's defaults)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for w in model.weights:
        if w.path.endswith("kernel"):
            fan_in = int(np.prod(w.shape[:-1]))
            w.assign(rng.normal(0.0, (2.0 / fan_in) ** 0.5, size=tuple(w.shape)).astype("float32"))


def torch_macs() -> dict[str, int]:
    import timm
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    from scalenet import create_model

    twins = {"resnet50": torchvision.models.resnet50, "seresnet50": lambda: timm.create_model("seresnet50"),
             "resnext50_32x4d": torchvision.models.resnext50_32x4d, "scalenet50": lambda: create_model("scalenet50")}
    out = {}
    for name, make in twins.items():
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            make().eval()(torch.zeros(1, 3, SIDE, SIDE))
        out[name] = counter.get_total_flops() // 2
    return out


# ------------------------------------------------------------------------------------ the children
def _models(names) -> dict[str, Any]:
    """The named models, with random weights."""
    builders = _builders()
    models = {name: builders[name]() for name in names}
    for model in models.values():
        randomize(model)
    return models


def _timed(runners: dict[str, Callable[[], Any]], repeats: int, batch_size: int, xla: bool) -> dict[str, Any]:
    """One run's record: the first call of each runner (tracing, compiling) timed as setup, then
    ``repeats`` interleaved rounds (scalenet.timing)."""
    t0 = time.perf_counter()
    for run in runners.values():
        run()
    setup = time.perf_counter() - t0
    rows = summarize(interleaved(runners, repeats, warmup=1))
    return {"batch_size": batch_size, "xla": xla, "repeats": repeats, "setup_s": setup,
            "median_ms": {n: r["median_ms"] for n, r in rows.items()},
            "min_ms": {n: r["min_ms"] for n, r in rows.items()}}


def tensorflow_child(args: argparse.Namespace) -> dict[str, Any]:
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op)
    device = "/GPU:0" if args.device == "gpu" else "/CPU:0"
    if args.device == "gpu" and not tf.config.list_physical_devices("GPU"):
        raise SystemExit("error: --device gpu: TensorFlow sees no GPU here; run with --device cpu")
    with tf.device(device):
        models = _models(MODELS)
        out: dict[str, Any] = {"macs": {n: keras_macs(m) for n, m in models.items()}, "runs": []}
        for batch_size, repeats in ((16, args.repeats), (1, args.repeats_b1)):
            x = tf.random.normal((batch_size, SIDE, SIDE, 3), seed=1)
            for jit in (False, True):
                runners = {}
                for name, model in models.items():
                    fn = tf.function(lambda t, m=model: m(t, training=False), jit_compile=jit)
                    runners[name] = lambda f=fn: f(x).numpy()  # .numpy() waits for the result
                out["runs"].append(_timed(runners, repeats, batch_size, jit))
                print(f"[inter-op {args.inter_op}] batch {batch_size} {'XLA' if jit else 'graph'} done",
                      file=sys.stderr, flush=True)
    return out


def jax_child(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    models = _models(JAX_MODELS)
    out: dict[str, Any] = {"macs": {n: keras_macs(m) for n, m in models.items()}, "runs": []}
    for batch_size, repeats in ((16, args.repeats), (1, args.repeats_b1)):
        x = jax.random.normal(jax.random.key(1), (batch_size, SIDE, SIDE, 3))
        runners = {}
        for name, model in models.items():
            tv = [v.value for v in model.trainable_variables]
            ntv = [v.value for v in model.non_trainable_variables]
            fn = jax.jit(lambda tv, ntv, t, m=model: m.stateless_call(tv, ntv, t, training=False)[0])
            runners[name] = lambda f=fn, tv=tv, ntv=ntv: f(tv, ntv, x).block_until_ready()
        out["runs"].append(_timed(runners, repeats, batch_size, True))
        print(f"[jax] batch {batch_size} done", file=sys.stderr, flush=True)
    return out


def child_main(args: argparse.Namespace) -> None:
    result = jax_child(args) if args.child == "jax" else tensorflow_child(args)
    import keras

    result["versions"] = {"keras": keras.__version__, "backend": keras.backend.backend()}
    if args.child == "jax":
        import jax

        result["versions"]["jax"] = jax.__version__
    else:
        import tensorflow as tf

        result["versions"]["tensorflow"] = tf.__version__
    Path(args.child_out).write_text(json.dumps(result))


def run_child(kind: str, args: argparse.Namespace, inter_op: int, intra_op: int, tmp: Path) -> dict[str, Any]:
    out = tmp / f"{kind}-{inter_op}.json"
    env = {**os.environ, "KERAS_BACKEND": kind, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # no CUDA probing in a CPU run
    cmd = [sys.executable, __file__, "--child", kind, "--child-out", str(out), "--inter-op", str(inter_op),
           "--intra-op", str(intra_op), "--repeats", str(args.repeats), "--repeats-b1", str(args.repeats_b1),
           "--device", args.device]
    print(f"running: KERAS_BACKEND={kind} {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    subprocess.run(cmd, env=env, check=True)
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------------- the report
def _ratio_table(run: dict[str, Any], macs: dict[str, int]) -> list[str]:
    base = run["median_ms"][REFERENCE]
    rows = ["| model | MACs (G) | median ms | min ms | vs ResNet-50 |", "|---|---:|---:|---:|---:|"]
    for name, ms in run["median_ms"].items():
        rows.append(f"| {name} | {macs[name] / 1e9:.2f} | {ms:.1f} | {run['min_ms'][name]:.1f} | {ms / base:.2f}x |")
    return rows


def report(result: dict[str, Any]) -> str:
    tf_runs = result["tensorflow"]
    first = next(iter(tf_runs.values()))
    macs = first["macs"]
    lines = [f"# The release's speed test in TensorFlow on {result['device']}", "",
             f"TensorFlow {first['versions']['tensorflow']}, Keras {first['versions']['keras']}, "
             f"{SIDE}x{SIDE}, fp32, NHWC, inference; median of interleaved repeats in one process per "
             f"inter-op setting (intra-op threads: {result['intra_op']}). Reproduce: `{result['command']}`.", ""]
    for label, res in tf_runs.items():
        for run in res["runs"]:
            mode = "tf.function + XLA (jit_compile)" if run["xla"] else "tf.function (graph)"
            lines += [f"## {mode}, batch {run['batch_size']}, {label}", "",
                      f"{run['repeats']} repeats; tracing{' and compiling' if run['xla'] else ''} all models "
                      f"took {run['setup_s']:.0f} s.", ""]
            lines += _ratio_table(run, macs) + [""]
            pair = run["median_ms"]["scalenet50 (release)"] / run["median_ms"]["resnet50 (release)"]
            lines += [f"The pair the paper timed, scalenet50 (release) / resnet50 (release): {pair:.2f}x "
                      "(the paper, GTX 1060: 93 / 95 ms = 0.98x).", ""]
    if len(tf_runs) < 2:
        return "\n".join(lines)
    lines += ["## Do parallel branches help? Each model against ResNet-50, inter-op 1 against N", "",
              "| mode | batch | model | ratio, inter-op 1 | ratio, inter-op N | median ms, 1 | median ms, N |",
              "|---|---:|---|---:|---:|---:|---:|"]
    one, many = (tf_runs[k] for k in sorted(tf_runs, key=lambda k: tf_runs[k]["inter_op"]))
    for r1, rn in zip(one["runs"], many["runs"]):
        for name in MODELS:
            if name == REFERENCE:
                continue
            q1 = r1["median_ms"][name] / r1["median_ms"][REFERENCE]
            qn = rn["median_ms"][name] / rn["median_ms"][REFERENCE]
            lines.append(f"| {'XLA' if r1['xla'] else 'graph'} | {r1['batch_size']} | {name} | {q1:.2f}x | {qn:.2f}x "
                         f"| {r1['median_ms'][name]:.1f} | {rn['median_ms'][name]:.1f} |")
    lines += ["", "The ratios come from one process each (interleaved); the absolute times of the two columns "
              "come from two processes run one after the other.", ""]
    if "jax" in result:
        jx = result["jax"]
        lines += [f"## JAX {jx['versions']['jax']} (Keras {jx['versions']['keras']}), jax.jit of stateless_call", ""]
        for run in jx["runs"]:
            lines += [f"batch {run['batch_size']}, {run['repeats']} repeats, compile {run['setup_s']:.0f} s:", ""]
            lines += _ratio_table(run, jx["macs"]) + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10, help="interleaved repeats at batch 16")
    p.add_argument("--repeats-b1", type=int, default=30, help="interleaved repeats at batch 1")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--no-jax", action="store_true", help="skip the jax.jit row")
    p.add_argument("--out-dir", default="benchmarks/results")
    p.add_argument("--force", action="store_true", help="overwrite existing results")
    p.add_argument("--child", choices=("tensorflow", "jax"), help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--inter-op", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--intra-op", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args)
    if args.repeats < 1 or args.repeats_b1 < 1:
        p.exit(2, "error: --repeats and --repeats-b1 must be at least 1\n")
    cores = len(os.sched_getaffinity(0))
    if args.device == "gpu":
        name = "gpu (tensorflow)"
        try:
            out = subprocess.run([sys.executable, "-c", "import tensorflow as tf; d = tf.config.list_physical_devices('GPU');"
                                  "print(tf.config.experimental.get_device_details(d[0])['device_name'] if d else '')"],
                                 env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True, text=True)
            name = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
        except (OSError, IndexError):
            name = ""
        if not name:
            p.exit(2, "error: --device gpu: TensorFlow is not installed or sees no GPU; install "
                      "'tensorflow[and-cuda]' or run with --device cpu\n")
    else:
        name = device_name(torch.device("cpu")).rsplit(" (", 1)[0] + f" ({cores} threads)"
    stem = Path(args.out_dir) / f"tf-speed-{device_slug(name)}"
    paths = (stem.with_suffix(".json"), stem.with_suffix(".md"))
    existing = [str(q) for q in paths if q.exists()]
    if existing and not args.force:
        p.exit(2, f"error: {existing[0]} exists; pass --force to overwrite it\n")
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    expected = torch_macs()
    settings = (1, cores) if args.device == "cpu" else (cores,)
    command = "python benchmarks/tf_speed.py" + "".join(
        f" {a}" for a in sys.argv[1:] if a != "--force")
    result: dict[str, Any] = {"device": name, "intra_op": cores, "command": command, "tensorflow": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for inter_op in settings:
            res = run_child("tensorflow", args, inter_op, cores, Path(tmp))
            res["inter_op"] = inter_op
            wrong = {n: (res["macs"][n], expected[n]) for n in CHECKED if res["macs"][n] != expected[n]}
            if wrong:
                raise SystemExit(f"error: Keras MACs differ from PyTorch's (keras, torch): {wrong}")
            result["tensorflow"][f"inter-op {inter_op}"] = res
        if not args.no_jax and args.device == "cpu":
            result["jax"] = run_child("jax", args, 0, cores, Path(tmp))
    result["torch_macs"] = expected
    text = report(result)
    atomic_write_text(paths[0], json.dumps(result, indent=1) + "\n")
    atomic_write_text(paths[1], text + "\n")
    print(text)
    print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)


if __name__ == "__main__":
    main()
