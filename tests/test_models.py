import copy
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import scalenet
from scalenet import Structure
from scalenet.checkpoint import CheckpointError, save_weights
from scalenet.cli import main
from scalenet.models import upsample_to
from scalenet.models.scalenet import BILINEAR, NEAREST, branch_input

from conftest import PUBLISHED
from portable import portable_init, portable_input
from reference import reference_forward, reference_train_step


def release_layout(structure: Structure, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """The release's state_dict names and shapes, written out from the rows alone."""
    bn = lambda p, c: {f"{p}.{n}": ((c,) if n != "num_batches_tracked" else ()) for n in
                       ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    w = structure.width
    keys = {"conv1.weight": (w, 3, 7, 7), **bn("bn1", w)}
    inplanes, k = w, 0
    for stage, depth in enumerate(structure.layers):
        planes = w * 2**stage
        for b in range(depth):
            p = f"layer{stage + 1}.{b}"
            row = structure.rows[k]
            keys[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            keys.update(bn(f"{p}.bn1", planes))
            for i, c in enumerate(row[:-1]):
                if c:
                    ks = 3 if row[-1] / 2**i > 1 else 1
                    keys[f"{p}.conv2.{i}.weight"] = (c, planes, ks, ks)
                    keys.update(bn(f"{p}.bn2.{i}", c))
            keys[f"{p}.conv3.weight"] = (4 * planes, sum(row[:-1]), 1, 1)
            keys.update(bn(f"{p}.bn3", 4 * planes))
            if b == 0:
                keys[f"{p}.downsample.0.weight"] = (4 * planes, inplanes, 1, 1)
                keys.update(bn(f"{p}.downsample.1", 4 * planes))
            inplanes = 4 * planes
            k += 1
    keys["fc.weight"] = (num_classes, inplanes)
    keys["fc.bias"] = (num_classes,)
    return keys


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_state_dict_has_the_release_layout(name):
    model = scalenet.create_model(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == release_layout(Structure.published(name))


def test_models_built_in_one_process_do_not_share_rows():
    # The release kept the block index in a class-level counter; a second model read wrong rows.
    first = {k: v.shape for k, v in scalenet.create_model("scalenet50").state_dict().items()}
    scalenet.create_model("scalenet50_light")
    scalenet.create_model("scalenet101")
    again = {k: v.shape for k, v in scalenet.create_model("scalenet50").state_dict().items()}
    assert first == again
    light = {k: tuple(v.shape) for k, v in scalenet.create_model("scalenet50_light").state_dict().items()}
    assert light == release_layout(Structure.published("scalenet50_light"))


def test_every_parameter_gets_a_gradient():
    model = scalenet.create_model("scalenet50_light", num_classes=10).train()
    model(torch.randn(2, 3, 224, 224)).logsumexp(1).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_zero_width_branches_have_no_modules(tiny):
    model = scalenet.create_model(tiny)
    block = model.layer2[0]  # row [5, 0, 3, 0]
    assert list(block.conv2.keys()) == ["0", "2"] and list(block.bn2.keys()) == ["0", "2"]


def test_upsampling_is_nearest_for_integer_factors_and_bilinear_otherwise():
    x = torch.randn(1, 2, 3, 3)
    assert torch.equal(upsample_to(x, (14, 14)), torch.nn.functional.interpolate(x, size=(14, 14), mode="bilinear"))
    x = torch.randn(1, 2, 2, 2)
    assert torch.equal(upsample_to(x, (14, 14)), x.repeat_interleave(7, 2).repeat_interleave(7, 3))


def _init_randomly(model):
    """Non-trivial BN statistics and affine parameters, so that a wrong key mapping shows."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith(("running_mean", "bias")):
                t.normal_(0, 0.1)
            elif name.endswith("weight") and t.ndim == 1:
                t.uniform_(0.5, 1.5)
    return model


def _close(a, b, tol=1e-5):
    return float((a - b).abs().max() / b.abs().max()) < tol


@pytest.mark.numerics
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_release_weights_reproduce_the_reference_network(tmp_path, suffix):
    source = _init_randomly(scalenet.create_model("scalenet50"))
    path = tmp_path / f"scalenet50{suffix}"
    save_weights(source, path)
    model = scalenet.create_model("scalenet50", checkpoint=path)
    rows, layers = Structure.published("scalenet50").rows, (3, 4, 6, 3)
    x = torch.randn(2, 3, 224, 224)
    sd = {k: v.clone() for k, v in source.state_dict().items()}

    with torch.no_grad():
        # relative to the output's scale: random weights give logits of ~1e4, and the block
        # rounds differently from the reference (BN before the nearest upsampling)
        assert _close(model.eval()(x), reference_forward(sd, rows, layers, x))
        # in train mode, batch-2 BN over 1x1 maps amplifies float32 rounding: compare in float64
        out = model.double().train()(x.double())
        sd64 = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
        ref = reference_forward(sd64, rows, layers, x.double(), training=True)
    assert _close(out, ref, 1e-9)
    # running statistics move the same way as the reference's BNs
    for k, v in model.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            assert torch.allclose(v, sd64[k], rtol=1e-8, atol=1e-10), k


@pytest.mark.numerics
def test_small_stem_matches_the_reference(tiny):
    model = _init_randomly(scalenet.create_model(tiny, num_classes=5, in_chans=3))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 14, 14)
    for training in (False, True):
        with torch.no_grad():
            out = model.train(training)(x)
            ref = reference_forward(sd, tiny.rows, tiny.layers, x, stem="small", training=training)
        assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_wrapped_checkpoints_load(tmp_path, tiny):
    model = _init_randomly(scalenet.create_model(tiny))
    wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ddp.pth")
    loaded = scalenet.create_model(tiny, checkpoint=tmp_path / "ddp.pth")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_mismatched_checkpoint_names_the_file_and_the_keys(tmp_path):
    path = tmp_path / "scalenet50.pth"
    save_weights(scalenet.create_model("scalenet50"), path)
    with pytest.raises(CheckpointError) as err:
        scalenet.create_model("scalenet50_light", checkpoint=path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    assert "layer1.0.conv2.0.weight (62, 64, 3, 3) vs (30, 64, 3, 3)" in msg
    assert "missing keys (layer1.2.conv2.3.weight" not in msg  # 50 has x7 there, light does not
    assert "unexpected keys (layer1.2.conv2.3.weight" in msg


def test_missing_keys_are_reported(tmp_path, tiny):
    state = scalenet.create_model(tiny).state_dict()
    del state["fc.bias"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match=r"1 missing keys \(fc.bias\)"):
        scalenet.create_model(tiny, checkpoint=tmp_path / "cut.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, tiny, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=f"{path}: not a readable"):
        scalenet.create_model(tiny, checkpoint=path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        scalenet.create_model(tiny, checkpoint=tmp_path / f"absent{suffix}")


def test_pickled_code_is_refused(tmp_path, tiny):
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1), "obj": copy.copy}, path)  # a function: not weights
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        scalenet.create_model(tiny, checkpoint=path)


# ---------------------------------------------------------------------------- timm
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_timm_create_model(name):
    model = timm.create_model(name, num_classes=7)
    assert model.fc.out_features == 7
    cfg = model.pretrained_cfg
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    assert cfg["input_size"] == (3, 224, 224) and cfg["mean"] == (0.485, 0.456, 0.406)
    top1, top5 = Structure.published(name).meta["published"]["top1_err"], Structure.published(name).meta["published"]["top5_err"]
    assert f"{top1:.2f}/{top5:.2f}" in cfg["notes"][0]


def test_published_errors_are_the_release_figures():
    figures = {n: (Structure.published(n).meta["published"]["top1_err"], Structure.published(n).meta["published"]["top5_err"])
               for n in PUBLISHED}
    assert figures == {"scalenet50_light": (22.80, 6.57), "scalenet50": (22.02, 6.05),
                       "scalenet101": (20.82, 5.42), "scalenet152": (20.06, 5.18)}


def test_timm_lists_the_models():
    assert set(PUBLISHED) <= set(timm.list_models("scalenet*"))
    assert scalenet.list_models() == list(PUBLISHED)


def test_features_only():
    model = timm.create_model("scalenet50", features_only=True)
    assert model.feature_info.channels() == [64, 256, 512, 1024, 2048]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    feats = model.eval()(torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 112, 112), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]


def test_features_only_small_stem_through_create_model(tmp_path, tiny):
    path = tmp_path / "w.safetensors"
    save_weights(scalenet.create_model(tiny), path)
    model = scalenet.create_model(tiny, features_only=True, checkpoint=path)  # full checkpoint, then wrapped
    assert model.feature_info.reduction() == [1, 1, 2]
    assert [f.shape[-1] for f in model(torch.randn(1, 3, 14, 14))] == [14, 14, 7]


def test_forward_features_head_and_reset_classifier(tiny):
    model = scalenet.create_model(tiny, num_classes=5).eval()
    x = torch.randn(2, 3, 14, 14)
    feats = model.forward_features(x)
    assert feats.shape == (2, tiny.num_features, 7, 7)
    assert torch.equal(model.forward_head(feats), model(x))
    assert model.forward_head(feats, pre_logits=True).shape == (2, tiny.num_features)
    model.reset_classifier(0)
    assert model(x).shape == (2, tiny.num_features)
    model.reset_classifier(0, "")
    assert model(x).shape == (2, tiny.num_features, 7, 7)
    model.reset_classifier(3)  # None keeps the current (here: no) pooling, as in timm
    assert model.forward_head(feats, pre_logits=True).shape == (2, tiny.num_features, 7, 7)
    model.reset_classifier(3, "avg")
    assert model(x).shape == (2, 3)


def test_structure_path_and_object_build_the_same_model(tmp_path, tiny):
    path = tiny.save(tmp_path / "tiny.json")
    a = {k: v.shape for k, v in scalenet.create_model(path).state_dict().items()}
    b = {k: v.shape for k, v in scalenet.create_model(tiny).state_dict().items()}
    assert a == b


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'scalenet51'; choose one of scalenet50_light"):
        scalenet.create_model("scalenet51")


# ---------------------------------------------------------------------------- any input size
LOGITS = Path(__file__).parent / "data" / "published_logits_224.npz"
#: How far two float32 computations of the same forward may be apart, in units of one of them's
#: own rounding error (float32 against float64, measured in the same run). Two implementations
#: that each round as much as the one measured here are at most 2 such errors apart; 8 leaves
#: room for kernels (another CPU's, another thread count's) that round up to 4 times worse.
ROUNDING_FACTOR = 8
#: A real change to the forward must land this many tolerances away, or the check proves nothing.
DETECTED = 100


def _published(name: str):
    """The model and input the recorded logits were made with (tests/data/make_published_logits.py):
    the same bits on every CPU, unlike torch's normal draws (tests/portable.py)."""
    model = portable_init(scalenet.create_model(name), seed=0)
    return model, portable_input((np.load(LOGITS)[f"{name}.eval"].shape[0], 3, 224, 224), seed=1)


def float32_tolerance(model, x: torch.Tensor, mode: str) -> tuple[torch.Tensor, float]:
    """The model's float32 output in ``mode`` and the tolerance for comparing it with a float32
    output computed elsewhere: ROUNDING_FACTOR times its largest deviation from the same forward
    in float64 (at least one float32 unit in the last place of the largest logit)."""
    exact = copy.deepcopy(model).double().train(mode == "train")
    model.train(mode == "train")
    with torch.no_grad():
        got, ref = model(x), exact(x.double())
    rounding = (got.double() - ref).abs().max().item()
    ulp = torch.finfo(torch.float32).eps * ref.abs().max().item()
    return got, ROUNDING_FACTOR * max(rounding, ulp)


@pytest.mark.slow
@pytest.mark.numerics
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_at_224_the_outputs_are_those_of_the_code_before_any_size_was_supported(name):
    # recorded on another machine: equal within float32 rounding, not bit for bit
    expected = np.load(LOGITS)
    model, x = _published(name)
    for mode in ("eval", "train"):  # eval first: the recording's train pass came after it
        got, tol = float32_tolerance(model, x, mode)
        recorded = torch.from_numpy(expected[f"{name}.{mode}"]).double()
        assert (got.double() - recorded).abs().max().item() <= tol, mode


@pytest.mark.slow
@pytest.mark.numerics
def test_the_recorded_logits_catch_real_changes_to_the_forward_by_orders_of_magnitude():
    # the paper form (tests/reference.py) on the same weights: right, it lands within the
    # tolerance; with a bug, at least DETECTED tolerances away, in eval and in train mode
    from reference import MUTATIONS

    name = "scalenet50_light"  # nearest factors 2, 4, 7, bilinear branches and 1x1 maps
    expected = np.load(LOGITS)
    model, x = _published(name)
    s = model.structure
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tolerances = {mode: float32_tolerance(model, x, mode)[1] for mode in ("eval", "train")}
    worst = {}
    for mutation in MUTATIONS:
        for mode, tol in tolerances.items():
            with torch.no_grad():
                out = reference_forward({k: v.clone() for k, v in state.items()}, s.rows, s.layers, x, scales=s.scales,
                                        stem=s.stem, training=mode == "train", mutation=mutation)
            recorded = torch.from_numpy(expected[f"{name}.{mode}"]).double()
            worst[mutation, mode] = (out.double() - recorded).abs().max().item() / tol
    assert worst[None, "eval"] <= 1 and worst[None, "train"] <= 1, worst
    for mutation in MUTATIONS[1:]:
        assert worst[mutation, "eval"] >= DETECTED and worst[mutation, "train"] >= DETECTED, (mutation, worst)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_every_published_model_runs_at_any_size_of_32_px_or_more(name):
    model = scalenet.create_model(name, num_classes=7).eval()
    with torch.no_grad():
        for size in [(32, 32), (64, 64), (96, 96), (128, 128), (160, 160), (224, 224), (320, 320), (480, 640), (33, 47)]:
            out = model(torch.randn(1, 3, *size))
            assert out.shape == (1, 7) and torch.isfinite(out).all(), size


def test_a_branch_larger_than_its_map_pools_the_whole_axis():
    x = torch.randn(2, 3, 5, 9)
    p, mode = branch_input(x, {1: x}, 7)  # 5 rows < 7: all of them; 9 columns >= 7: the first window of 7
    assert p.shape == (2, 3, 1, 1) and mode is NEAREST
    assert torch.equal(p[..., 0, 0], x[..., :, :7].amax(dim=(-2, -1)))
    flat = x[..., :3, :]
    q, mode = branch_input(flat, {1: flat}, 4)  # 3 rows < 4: one window of all 3; 9 columns: two windows of 4
    assert q.shape == (2, 3, 1, 2) and mode is BILINEAR  # 9 is not a multiple of 2
    assert torch.equal(q[..., 0, 1], flat[..., :, 4:8].amax(dim=(-2, -1)))
    pooled = {1: flat}
    branch_input(flat, pooled, 2)
    branch_input(flat, pooled, 4)
    assert sorted(pooled) == [1, 2]  # a clamped map is not stored for reuse: its windows no longer nest


@pytest.mark.numerics
def test_training_at_a_small_size_matches_the_paper_form(tiny):
    # tiny is built for 14 px; at 8 px stage 2 is 4x4, smaller than the x7 branch's factor
    model = scalenet.create_model(tiny, num_classes=5).double()
    out, ref, grads, stats = reference_train_step(model, tiny, torch.randn(3, 3, 8, 8, dtype=torch.float64))
    assert torch.allclose(out, ref, rtol=1e-9, atol=1e-9)
    for name, (g, g_ref) in grads.items():
        assert torch.allclose(g, g_ref, rtol=1e-7, atol=1e-9), name


def test_a_model_that_cannot_fit_in_memory_is_refused_before_allocating(tmp_path, capsys):
    huge = Structure.from_channels([[10**9, 0, 0, 0]], (1,), stem="small", width=16, image_size=32, name="huge")
    with pytest.raises(ValueError, match=r"huge: .* parameters need .* GiB for the weights alone, but .* GiB of memory"):
        scalenet.create_model(huge)
    assert scalenet.create_model(huge, device="meta").conv1.weight.device.type == "meta"  # nothing allocated
    path = huge.save(tmp_path / "huge.json")
    assert main(["info", str(path)]) == 0
    assert "note: huge:" in capsys.readouterr().err
