"""scalenet.keras on each Keras backend, each in a fresh interpreter (tests/keras_checks.py), and
the one line that names the extra where Keras is not installed."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BACKENDS = {"tensorflow": "tensorflow", "jax": "jax"}  # backend -> the package it needs


@pytest.mark.numerics
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_keras_checks_on_each_backend(backend):
    for module in ("keras", BACKENDS[backend]):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install 'scalenet[{backend}]'")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    got = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "keras_checks.py")],
                         capture_output=True, text=True, env=env, cwd=HERE.parent, timeout=900)
    assert got.returncode == 0, got.stdout[-6000:] + got.stderr[-2000:]
    assert " passed" in got.stdout.strip().splitlines()[-1] and "skipped" not in got.stdout.strip().splitlines()[-1]


def test_scalenet_after_tensorflow_is_refused_in_one_line_not_a_crash():
    for module in ("tensorflow", "triton"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: nothing to crash")
    got = subprocess.run([sys.executable, "-c", "import tensorflow; import scalenet"], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert got.returncode == 1, got.stderr[-2000:]  # not -11: no segmentation fault
    assert got.stderr.strip().splitlines()[-1] == (
        "ImportError: import scalenet (or torch and torchvision) before tensorflow or keras: TensorFlow and Triton "
        "both bundle LLVM, and Triton loaded after TensorFlow crashes the process")


def test_without_keras_the_package_imports_and_scalenet_keras_names_the_extra():
    code = ("import sys; sys.modules['keras'] = None; import scalenet; print('scalenet imports'); "
            "import scalenet.keras")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert got.stdout.strip() == "scalenet imports"
    assert got.stderr.strip().splitlines()[-1] == (
        "scalenet.compat.MissingExtra: scalenet.keras needs keras, which is not installed; install it with: "
        "pip install 'scalenet[tensorflow]' or pip install 'scalenet[jax]'")
