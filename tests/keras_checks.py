"""scalenet.keras against PyTorch, on the Keras backend of this process (KERAS_BACKEND).

tests/test_keras.py runs this module once per backend, each in a fresh interpreter (Keras fixes
its backend at import). Every comparison is with the PyTorch model's float64 forward on the
same weights: the Keras float32 output must lie within ROUNDING_FACTOR times the PyTorch
float32 forward's own rounding error, measured in the same run (as tests/test_models.py does for
the recorded logits); the mutations show that a real change lands orders of magnitude outside.
"""

import copy
import os

import keras
import numpy as np
import pytest
import torch

import scalenet
import scalenet.checkpoint
import scalenet.keras as sk
from scalenet import Structure
from scalenet.keras.model import MUTATIONS, build

from conftest import PUBLISHED
from portable import portable_init, portable_input

BACKEND = keras.backend.backend()
assert BACKEND == os.environ.get("KERAS_BACKEND", BACKEND)
ROUNDING_FACTOR, DETECTED = 8, 100
#: Keras's training-mode BN takes the batch variance in one pass (E[x^2] - E[x]^2), which rounds
#: worse than PyTorch's two-pass variance: measured 1.2 of the eval factor's tolerances on JAX.
TRAIN_ROUNDING_FACTOR = 4 * ROUNDING_FACTOR

# TensorFlow's tensors predate NumPy 2's copy keyword; Keras's own convert_to_numpy triggers it
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

#: Zero-width branches, a small stem, 2 stages: at 14 px stage 2 is 7x7, so x4 pools to 1x1 and
#: x7 to 1x1 (nearest); at 20x28 the x7 branch of stage 2 (10x14) pools 7x7 windows to 1x2; at
#: 12x12 stage 2 is 6x6: x4 pools 4x4 to 1x1 and x7 exceeds the map, a global max (clamped window).
#: Bilinear: 14 px in stage 1 (x4: 14 -> 3), 20x28 (x4: 20 -> 5 and 28 -> 7, exact; x2 exact).
LEARNED = Structure.from_channels([[4, 2, 2, 2], [8, 4, 0, 4]], (1, 1), stem="small", width=8, image_size=32,
                                  name="learned")
SIZES = [(32, 32), (20, 28), (14, 14), (12, 12)]


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def _run(model, x: np.ndarray, training: bool = False):
    """Training mode: one eager call. Inference: ``predict``, compiled (op-by-op JAX would take
    minutes for ScaleNet-152)."""
    out = model(x, training=True) if training else model.predict(x, batch_size=len(x), verbose=0)
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else np.asarray(out)


def _reference(model: torch.nn.Module, x: torch.Tensor, train: bool = False):
    """PyTorch's float32 output and its float64 one on the same weights (copies: train mode
    updates BN statistics)."""
    f32, f64 = copy.deepcopy(model).train(train), copy.deepcopy(model).double().train(train)
    with torch.no_grad():
        return f32(x), f64(x.double())


def _tolerance(f32: torch.Tensor, f64: torch.Tensor, factor: float = ROUNDING_FACTOR) -> float:
    rounding = (f32.double() - f64).abs().max().item()
    return factor * max(rounding, torch.finfo(torch.float32).eps * f64.abs().max().item())


def _distance(keras_out: np.ndarray, f64: torch.Tensor) -> float:
    return float(np.abs(keras_out.astype(np.float64) - f64.numpy()).max())


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_models_at_224_give_the_eval_logits(name):
    model = portable_init(scalenet.create_model(name), seed=0).eval()  # BN statistics away from the identity
    x = portable_input((1, 3, 224, 224), seed=1)
    f32, f64 = _reference(model, x)
    got = _run(sk.from_torch(model), _nhwc(x))
    assert got.shape == (1, 1000)
    assert _distance(got, f64) <= _tolerance(f32, f64)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_a_learned_structure_at_small_sizes(size):
    model = portable_init(scalenet.create_model(LEARNED, num_classes=5), seed=2).eval()
    x = portable_input((2, 3, *size), seed=3)
    f32, f64 = _reference(model, x)
    keras_model = sk.from_torch(model, image_size=size)
    assert _distance(_run(keras_model, _nhwc(x)), f64) <= _tolerance(f32, f64)


def test_the_sizes_exercise_the_global_max_and_bilinear_rules():
    kinds = {}
    for size in SIZES:
        layers = build(LEARNED, image_size=size).model.layers
        kinds[size] = {type(l).__name__ for l in layers}, [l.pool_size for l in layers if "branch" in l.name
                                                           and type(l).__name__ == "MaxPooling2D"]
    assert "BilinearResize" in kinds[(14, 14)][0] and "BilinearResize" not in kinds[(32, 32)][0]
    assert (6, 6) in kinds[(12, 12)][1]  # x7 on a 6x6 map: the whole map


@pytest.mark.parametrize("size", [(32, 32), (14, 14)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_feature_maps_are_features_only(size):
    model = portable_init(scalenet.create_model(LEARNED, num_classes=5), seed=2).eval()
    maps = scalenet.create_model(LEARNED, features_only=True)
    maps.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")})
    x = portable_input((2, 3, *size), seed=3)
    f32, f64 = _reference(maps.eval(), x)
    got = _run(sk.from_torch(model, image_size=size, features=True), _nhwc(x))
    assert len(got) == len(f64) == len(LEARNED.layers) + 1
    for level, (g, a, b) in enumerate(zip(got, f32, f64)):
        assert g.shape == tuple(b.permute(0, 2, 3, 1).shape), level
        assert _distance(g, b.permute(0, 2, 3, 1)) <= _tolerance(a, b), level


def test_a_real_change_lands_orders_of_magnitude_outside_the_tolerance():
    model = portable_init(scalenet.create_model(LEARNED, num_classes=5), seed=2).eval()
    size = (20, 28)  # nearest factors 2, 4 and 7x14 in stage 1, bilinear nowhere
    x = portable_input((2, 3, *size), seed=3)
    f32, f64 = _reference(model, x)
    tol = _tolerance(f32, f64)
    worst = {}
    for mutation in MUTATIONS:
        built = build(LEARNED, num_classes=5, image_size=size, mutation=mutation)
        sk.copy_weights(model, built)
        worst[mutation] = _distance(_run(built.model, _nhwc(x)), f64) / tol
    assert worst[None] <= 1, worst
    assert all(worst[m] >= DETECTED for m in MUTATIONS[1:]), worst


def test_training_mode_matches_pytorchs_training_forward_and_fits():
    torch.manual_seed(0)
    model = portable_init(scalenet.create_model(LEARNED, num_classes=5), seed=2)
    x = portable_input((4, 3, 14, 14), seed=3)  # bilinear branches: BN's batch statistics of the upsampled map
    f32, f64 = _reference(model, x, train=True)
    keras_model = sk.from_torch(model, image_size=(14, 14))
    assert _distance(_run(keras_model, _nhwc(x), training=True), f64) <= _tolerance(f32, f64, TRAIN_ROUNDING_FACTOR)

    keras_model.compile(optimizer=keras.optimizers.SGD(0.05), loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    y = np.arange(4) % 5
    before = [np.array(w) for w in keras_model.get_weights()]
    history = keras_model.fit(_nhwc(x), y, epochs=3, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    after = keras_model.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_a_saved_keras_file_reloads_with_identical_outputs(tmp_path):
    model = portable_init(scalenet.create_model(LEARNED, num_classes=5), seed=2).eval()
    keras_model = sk.from_torch(model, image_size=(14, 14))
    path = tmp_path / "learned.keras"
    keras_model.save(path)
    again = keras.models.load_model(path)
    x = _nhwc(portable_input((2, 3, 14, 14), seed=3))
    assert np.array_equal(_run(again, x), _run(keras_model, x))


def test_create_model_takes_what_scalenet_create_model_takes(tmp_path):
    from scalenet.checkpoint import save_weights

    torch_model = portable_init(scalenet.create_model(LEARNED, num_classes=5), seed=2).eval()
    path = save_weights(torch_model, tmp_path / "learned.safetensors")
    structure = LEARNED.save(tmp_path / "learned.json")
    keras_model = sk.create_model(str(structure), num_classes=5, checkpoint=path, image_size=14)
    x = portable_input((2, 3, 14, 14), seed=3)
    f32, f64 = _reference(torch_model, x)
    assert _distance(_run(keras_model, _nhwc(x)), f64) <= _tolerance(f32, f64)


def test_export_keras_and_saved_model_check_themselves(tmp_path, capsys):
    from scalenet.cli import main

    torch_model = portable_init(scalenet.create_model(LEARNED, num_classes=5), seed=2).eval()
    weights = scalenet.checkpoint.save_weights(torch_model, tmp_path / "w.safetensors")
    structure = LEARNED.save(tmp_path / "learned.json")
    common = ["export", "--model", str(structure), "--checkpoint", str(weights), "--num-classes", "5", "--image-size",
              "14"]
    out = tmp_path / "m.keras"
    assert main([*common, "--keras", str(out)]) == 0
    assert "m.keras: Keras 3 model, reloaded; 14 px NHWC input" in capsys.readouterr().out
    x = portable_input((2, 3, 14, 14), seed=3)
    f32, f64 = _reference(torch_model, x)
    assert _distance(_run(keras.models.load_model(out), _nhwc(x)), f64) <= _tolerance(f32, f64)
    before = out.read_bytes()
    assert main([*common, "--keras", str(out)]) == 2  # exists: refused, untouched
    assert "pass --force" in capsys.readouterr().err and out.read_bytes() == before

    if BACKEND == "tensorflow":  # a SavedModel is TensorFlow's format
        import tensorflow as tf

        served = tmp_path / "served"
        assert main([*common, "--saved-model", str(served)]) == 0
        loaded = tf.saved_model.load(str(served))  # kept: its variables live as long as it does
        got = loaded.serve(tf.constant(_nhwc(x))).numpy()
        assert _distance(got, f64) <= _tolerance(f32, f64)
        assert main([*common, "--saved-model", str(served)]) == 2
        assert f"--saved-model {served} exists" in capsys.readouterr().err


def test_bad_input_is_refused_as_scalenet_refuses_it(tmp_path):
    for args in (("scalenet51",), (str(tmp_path / "none.json"),)):
        with pytest.raises(Exception) as ours:
            scalenet.create_model(*args)
        with pytest.raises(type(ours.value)) as theirs:
            sk.create_model(*args)
        assert str(theirs.value) == str(ours.value) and len(str(ours.value).splitlines()) == 1
    with pytest.raises(ValueError, match="^from_torch takes a PyTorch ScaleNet, got Linear$"):
        sk.from_torch(torch.nn.Linear(2, 2))
    fused = scalenet.fuse(scalenet.create_model(LEARNED, num_classes=5))
    with pytest.raises(ValueError, match="^from_torch takes an unfused ScaleNet"):
        sk.from_torch(fused)
    with pytest.raises(ValueError, match="a stage would have no pixels|too small"):
        sk.create_model(LEARNED, image_size=1)
