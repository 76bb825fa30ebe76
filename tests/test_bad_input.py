"""Bad and edge-case input, command by command: one clear line, exit code 2, no traceback, nothing
lost. One test per cause (not per reported case); each fails without its fix."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import scalenet
from scalenet import Structure
from scalenet.allocation import (
    LatencyCost,
    MacsBudget,
    SupernetRun,
    WidthBudget,
    load_runs,
    select_runs,
    weigh_by_cost,
    SupernetSettings,
)
from scalenet.cli import main
from scalenet.data import build_data, read_image
from scalenet.latency import StageCost

from helpers import make_image_folder
from test_latency_budget import COSTS, fake_model, here, random_scores, supernet  # noqa: F401 (supernet: a fixture)


@pytest.fixture
def sidecar(tmp_path, supernet):  # noqa: F811
    runs = [SupernetRun(seed=s, scores=random_scores(supernet, s), structure=supernet) for s in (0, 1)]
    settings = SupernetSettings(data="fake", image_size=32, num_classes=10, in_chans=3)
    select_runs(runs, supernet, WidthBudget(1.0), settings).save(tmp_path / "first.json")
    return tmp_path / "first.scores.json"


def one_line_error(capsys, expected):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scalenet") and ": error: " in err[0] and expected in err[0], err


def refused(capsys, argv, message, *, code=2):
    """Runs the command, which must exit with ``code`` (returned, or the parser's exit) and print
    one line containing ``message``."""
    try:
        got = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own refusals
        got = e.code
    assert got == code
    one_line_error(capsys, message)


# ---------------------------------------------------------------------------- numbers that are not
@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_a_budget_or_alpha_that_is_not_a_finite_number_is_refused(tmp_path, sidecar, capsys, value):
    out = tmp_path / "x.json"
    refused(capsys, ["allocate", "--scores", sidecar, "--out", out, "--width-mult", value], "--width-mult")
    refused(capsys, ["allocate", "--scores", sidecar, "--out", out, "--latency-ms", value], "--latency-ms")
    if value != "0":
        refused(capsys, ["allocate", "--scores", sidecar, "--out", out, "--alpha", value], "--alpha")
    refused(capsys, ["study", "--data", "fashion-mnist", "--out", tmp_path / "s", "--width-mult", value], "--width-mult")
    assert not out.exists() and not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match="width_mult must be positive"):
        WidthBudget(float(value))


@pytest.mark.parametrize("token", ["Infinity", "-Infinity", "NaN"])
def test_a_structure_file_with_a_non_finite_count_names_the_file_and_the_row(tmp_path, capsys, token):
    path = tmp_path / "s.json"
    path.write_text('{"rows": [[4, 2, 2, 2, 28], [4, 2, %s, 2, 28]], "layers": [2], "stem": "small", "width": 8, '
                    '"image_size": 28}' % token)
    for argv in (["info", path], ["export", "--model", path, "--onnx", tmp_path / "m.onnx"]):
        refused(capsys, argv, f"{path}: row 1 entry 2 is")


def test_a_large_alpha_and_a_free_neuron_rank_without_dividing_by_zero(supernet):  # noqa: F811
    model = fake_model()
    model.stages[0] = StageCost(3.0, [0.5, 0.8, 1.1, 6.0], [0.02, 0.0, 0.01, 0.012])  # x2 neurons cost 0 ms
    costs = LatencyCost(model, supernet)
    scores = random_scores(supernet)
    for alpha in (1.0, 30.0, 1e6):
        weighed = weigh_by_cost(scores, costs, alpha)
        values = [v for b in weighed for row in b.scores for v in row]
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in values), alpha
        # the free x2 neurons of stage 1 outrank every priced one there
        first = weighed[0]
        assert min(first.scores[1]) > max(max(first.scores[i]) for i in (0, 2, 3)), alpha
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="alpha must be a finite number, 0 or more"):
            weigh_by_cost(scores, costs, bad)


# ---------------------------------------------------------------------------- options that cannot apply
def test_alpha_weighs_a_reselection_under_a_macs_budget_and_is_recorded(tmp_path, sidecar, supernet, capsys):  # noqa: F811
    macs = int(MacsBudget(1).bind(supernet, 10, 3).costs.highest * 0.5)
    rows = {}
    for alpha in ("0", "1"):
        out = tmp_path / f"a{alpha}.json"
        assert main(["allocate", "--scores", str(sidecar), "--out", str(out), "--macs", str(macs), "--alpha", alpha]) == 0
        rows[alpha] = Structure.load(out).rows
        assert json.loads((tmp_path / f"a{alpha}.scores.json").read_text())["settings"]["alpha"] == float(alpha)
    assert rows["0"] != rows["1"]
    # cheaper neurons (coarse scales, by MACs) win under alpha 1
    x1 = lambda rs: sum(r[0] for r in rs)  # noqa: E731
    assert x1(rows["1"]) < x1(rows["0"])


def test_old_scores_weighed_at_scoring_time_are_unweighed_on_load(tmp_path, sidecar):
    side = json.loads(sidecar.read_text())
    for run in side["runs"]:  # as BNScale(alpha=1) stored them: divided by MACs, then by the block's best
        for b, block in enumerate(run["scores"]):
            weighed = [[v / c for v in row] for row, c in zip(block, side["blocks"][b]["costs"])]
            top = max(v for row in weighed for v in row)
            run["scores"][b] = [[v / top for v in row] for row in weighed]
    side["settings"]["importance_alpha"] = 1.0
    old = tmp_path / "old.scores.json"
    old.write_text(json.dumps(side))
    now, _, settings = load_runs(sidecar)
    back, _, settings_back = load_runs(old)
    assert settings_back.importance_alpha == 0.0
    for a, b in zip(now, back):  # the same scores, up to the block's normalising figure (max)
        for x, y in zip(a.scores, b.scores):
            x, y = (np.concatenate([np.array(r) for r in block.scores]) for block in (x, y))
            assert np.allclose(x / x.max(), y, rtol=1e-12, atol=0)


@pytest.mark.parametrize("option", [["--layers", "1,1,1"], ["--scales", "1,2"], ["--supernet-width", "4"],
                                    ["--repeats", "3"], ["--sparsity", "0.001"], ["--epochs", "2"], ["--lr", "0.1"],
                                    ["--jobs", "1"], ["--seed", "3"]])
def test_training_options_with_scores_are_refused(tmp_path, sidecar, capsys, option):
    out = tmp_path / "x.json"
    refused(capsys, ["allocate", "--scores", sidecar, "--out", out, *option], f"{option[0]} does not apply with --scores")
    assert not out.exists()


def test_latency_options_without_a_latency_budget_are_refused(tmp_path, sidecar, capsys):
    model = tmp_path / "m.json"
    fake_model(here()).save(model)
    for extra in (["--macs", "100000"], []):
        refused(capsys, ["allocate", "--scores", sidecar, "--out", tmp_path / "x.json", "--latency-model", model, *extra],
                "--latency-model does not apply without --latency-ms")
    refused(capsys, ["allocate", "--scores", sidecar, "--out", tmp_path / "x.json", "--latency-batch-size", "4"],
            "--latency-batch-size does not apply")
    refused(capsys, ["allocate", "--data", "fashion-mnist", "--out", tmp_path / "x.json", "--run-dir", tmp_path / "r"],
            "--run-dir does not apply without --then-train")


def test_a_width_multiplier_beyond_the_supernet_is_refused_like_a_macs_target_beyond_it(tmp_path, sidecar, capsys):
    refused(capsys, ["allocate", "--scores", sidecar, "--out", tmp_path / "x.json", "--width-mult", "100"],
            "impossible budget: --width-mult 100 keeps 800 neurons in layer1.0, but the supernet has 32 there")
    assert main(["allocate", "--scores", str(sidecar), "--out", str(tmp_path / "y.json"), "--width-mult", "4"]) == 0


def test_an_empty_arm_list_is_refused(tmp_path, capsys):
    refused(capsys, ["study", "--data", "fashion-mnist", "--out", tmp_path / "s", "--arms", ""], "--arms")
    refused(capsys, ["study", "--data", "fashion-mnist", "--out", tmp_path / "s", "--arms", ","], "--arms")


# ---------------------------------------------------------------------------- images of other depths
def _gradient(h=24, w=32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return (x * 255 // (w - 1) + y) % 256  # 8-bit values, not constant


@pytest.mark.parametrize("kind", ["png16", "tiff-float", "int32"])
def test_16_bit_and_float_images_are_scaled_to_8_bits(tmp_path, kind):
    g8 = _gradient().astype(np.uint8)
    path = tmp_path / f"deep.{'png' if kind == 'png16' else 'tiff'}"  # PNG holds no 32-bit samples (Pillow 13)
    if kind == "png16":
        Image.fromarray(g8.astype(np.uint16) * 257).save(path)  # I;16: 0..65535
    elif kind == "tiff-float":
        Image.fromarray(g8.astype(np.float32) / 255.0).save(path)  # F
    else:
        Image.fromarray(g8.astype(np.int32) * 257).save(path)  # I: 32-bit signed
    assert Image.open(path).mode in {"png16": ("I;16", "I"), "tiff-float": ("F",), "int32": ("I",)}[kind]
    for mode, channels in (("RGB", 3), ("L", 1)):
        got = np.asarray(read_image(str(path), mode=mode)).reshape(g8.shape[0], g8.shape[1], -1)
        assert got.shape[-1] == channels
        assert np.abs(got.astype(int) - g8[..., None].astype(int)).max() <= 1, (kind, mode)  # not clipped to white


def test_predict_reads_a_16_bit_png_as_its_8_bit_copy(tmp_path, tiny_run):
    from scalenet.predict import load_predictor

    predictor = load_predictor(tiny_run / "best.pt")
    g8 = _gradient(32, 32).astype(np.uint8)
    Image.fromarray(np.stack([g8, g8[::-1], g8.T], -1)).save(tmp_path / "eight.png")
    Image.fromarray(g8.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    Image.fromarray(g8).save(tmp_path / "gray8.png")
    assert (predictor.read(tmp_path / "sixteen.png") - predictor.read(tmp_path / "gray8.png")).abs().max() < 0.05
    assert predictor.read(tmp_path / "eight.png").shape == predictor.read(tmp_path / "sixteen.png").shape


@pytest.fixture
def tiny_run(tmp_path_factory):
    folder = make_image_folder(tmp_path_factory.mktemp("data"), classes=3, per_class=6, size=32)
    run = tmp_path_factory.mktemp("run") / "r"
    structure = Structure.from_channels([[4, 2, 2, 0]], (1,), stem="small", width=8, image_size=32, name="t")
    path = structure.save(run.parent / "t.json")
    assert main(["train", "--model", str(path), "--data", str(folder), "--epochs", "1", "--batch-size", "8",
                 "--out", str(run), "--no-progress"]) == 0
    return run


# ---------------------------------------------------------------------------- data and resume
def test_a_class_whose_files_are_all_unreadable_is_an_error_naming_it(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "d", classes=3, per_class=4, size=16)
    broken = sorted(p for p in folder.iterdir() if p.is_dir())[1]
    for f in broken.iterdir():
        f.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=f"class folder {broken} has 4 image file\\(s\\) and none is readable"):
        build_data(folder)


def test_resuming_with_another_batch_size_is_refused_naming_both(tiny_run, capsys):
    folder = torch.load(tiny_run / "last.pt", weights_only=True)["data"]
    for resume in (["--resume"], ["--resume", "auto"]):
        refused(capsys, ["train", "--model", tiny_run.parent / "t.json", "--data", folder, "--epochs", "2",
                         "--batch-size", "5", "--out", tiny_run, *resume, "--no-progress"],
                "different batch size (8 there, 5 here)")


def _renamed_copy(folder: Path, dest: Path, names: dict[str, str]) -> Path:
    """The image folder with its class folders renamed (same images, same label order)."""
    for d in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        shutil.copytree(d, dest / names.get(d.name, d.name))
    return dest


def test_a_checkpoint_refuses_data_whose_class_names_differ_naming_both(tiny_run, tmp_path, capsys):
    """Class indices are matched by position: a checkpoint trained on class_0..2 evaluated on a
    folder x/y/z of the same size would report a meaningless accuracy. The names are checked."""
    folder = Path(torch.load(tiny_run / "last.pt", weights_only=True)["data"])
    assert main(["eval", "--checkpoint", str(tiny_run / "best.pt"), "--data", str(folder)]) == 0  # its own classes
    capsys.readouterr()
    other = _renamed_copy(folder, tmp_path / "xyz", {"class_0": "x", "class_1": "y", "class_2": "z"})
    refused(capsys, ["eval", "--checkpoint", tiny_run / "best.pt", "--data", other],
            f"{tiny_run / 'best.pt'} was trained on the classes [class_0, class_1, class_2], but {other} has "
            f"[x, y, z] (label 0 is 'class_0' there and 'x' here); evaluate it on data with the classes it was trained on")
    fewer = _renamed_copy(folder, tmp_path / "renamed_last", {"class_2": "z"})
    refused(capsys, ["eval", "--checkpoint", tiny_run / "best.pt", "--data", fewer],
            "label 2 is 'class_2' there and 'z' here")  # the first label that differs
    # resuming the run on the renamed data is refused too, naming both lists
    refused(capsys, ["train", "--model", tiny_run.parent / "t.json", "--data", other, "--epochs", "2",
                     "--batch-size", "8", "--out", tiny_run, "--resume", "--no-progress"],
            "class names ([class_0, class_1, class_2] there, [x, y, z] here; label 0 is 'class_0' there and 'x' here)")


def test_init_from_other_classes_starts_the_classifier_from_scratch(tiny_run, tmp_path, capsys):
    from scalenet.training.classification import _recorded_classes, start_from

    ckpt = tiny_run / "best.pt"
    assert _recorded_classes(ckpt) == ["class_0", "class_1", "class_2"]
    source = torch.load(ckpt, weights_only=True)["model"]
    for classes, kept in ((["class_0", "class_1", "class_2"], True), (["x", "y", "z"], False)):
        model = scalenet.create_model(Structure.load(tiny_run.parent / "t.json"), num_classes=3)
        start_from(model, ckpt, 3, classes=classes)
        assert torch.equal(model.fc.weight, source["fc.weight"]) == kept
        assert torch.equal(model.layer1[0].conv1.weight, source["layer1.0.conv1.weight"])  # the rest loads
        note = capsys.readouterr().out
        assert (f"note: {ckpt} was trained on the classes [class_0, class_1, class_2], but this data has [x, y, z] "
                "(label 0 is 'class_0' there and 'x' here); the classifier starts from scratch" in note) == (not kept), note


def test_a_folder_with_epoch_records_but_no_checkpoint_is_not_overwritten(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "d", classes=2, per_class=4, size=16)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "val_top1": 0.5}\n')
    structure = Structure.from_channels([[4, 2, 2, 0]], (1,), stem="small", width=8, image_size=16).save(tmp_path / "s.json")
    for resume in ([], ["--resume", "auto"]):
        refused(capsys, ["train", "--model", structure, "--data", folder, "--epochs", "1", "--out", run, *resume],
                "holds metrics.jsonl with epoch records but no checkpoint")
    assert (run / "metrics.jsonl").read_text() == '{"epoch": 1, "val_top1": 0.5}\n'


# ---------------------------------------------------------------------------- outputs
def test_allocate_refuses_to_overwrite_any_of_its_three_files_before_the_work(tmp_path, sidecar, capsys):
    first = tmp_path / "mine.json"
    assert main(["allocate", "--scores", str(sidecar), "--out", str(first)]) == 0
    before = {p: p.read_bytes() for p in tmp_path.glob("mine*")}
    refused(capsys, ["allocate", "--scores", sidecar, "--out", first, "--width-mult", "0.5"], "mine.json exists")
    other = tmp_path / "other.json"
    (tmp_path / "other.png").write_bytes(b"my photo")  # the chart's name, taken by an unrelated file
    refused(capsys, ["allocate", "--scores", sidecar, "--out", other], "other.png (the chart written beside the structure)")
    assert not other.exists() and (tmp_path / "other.png").read_bytes() == b"my photo"
    assert {p: p.read_bytes() for p in tmp_path.glob("mine*")} == before
    assert main(["allocate", "--scores", str(sidecar), "--out", str(first), "--width-mult", "0.5", "--force"]) == 0
    assert first.read_bytes() != before[first]


def test_export_latency_model_and_bench_refuse_existing_outputs_before_the_work(tmp_path, capsys, monkeypatch):
    import scalenet.bench
    import scalenet.cli.models

    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"mine")
    refused(capsys, ["export", "--model", "scalenet50_light", "--onnx", onnx], "m.onnx exists; pass --force")
    model = tmp_path / "cpu.json"
    model.write_text("{}")
    monkeypatch.setattr(scalenet.cli.models, "measure_latency_model", lambda *a, **k: pytest.fail("measured"))
    refused(capsys, ["latency-model", "--out", model], "cpu.json exists; pass --force")
    monkeypatch.setattr(scalenet.cli.models, "run_bench", lambda *a, **k: pytest.fail("timed"))
    js, _ = scalenet.bench.result_paths(tmp_path, scalenet.devices.device_name(torch.device("cpu")), "inference", 16,
                                        False, False, None)
    js.write_text("{}")
    refused(capsys, ["bench", "--out-dir", tmp_path], f"{js.name} (results of the same device and settings) exists")
    assert onnx.read_bytes() == b"mine" and model.read_text() == "{}" and js.read_text() == "{}"


def test_a_study_directory_holding_other_files_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    refused(capsys, ["study", "--data", "fashion-mnist", "--out", out], "holds files that are not a study's (notes.txt)")


def test_outputs_in_a_directory_or_under_a_file_are_refused_before_the_work(tmp_path, sidecar, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    refused(capsys, ["allocate", "--scores", sidecar, "--out", afile / "x.json"], f"{afile} is a file")
    refused(capsys, ["export", "--model", "scalenet50_light", "--onnx", tmp_path], "is a directory")
    refused(capsys, ["latency-model", "--out", afile / "m.json"], f"{afile} is a file")


# ---------------------------------------------------------------------------- messages
def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(tmp_path, tiny_run, capsys):
    structure = tiny_run.parent / "t.json"
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 4)
    image = tmp_path / "a.png"
    Image.fromarray(_gradient().astype(np.uint8)).save(image)
    for argv in (["predict", "--checkpoint", structure, image], ["eval", "--checkpoint", structure, "--data", "fashion-mnist"]):
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err
        assert "a structure file" in err and "weights_only" not in err and len(err.strip().splitlines()) == 1
    assert main(["predict", "--checkpoint", str(noise), str(image)]) == 2
    err = capsys.readouterr().err
    assert "not a PyTorch checkpoint or weight file" in err and "weights_only" not in err


def test_eval_on_data_of_other_classes_and_channels_says_so(tiny_run, capsys):
    refused(capsys, ["eval", "--checkpoint", tiny_run / "best.pt", "--data", "fashion-mnist"],
            "was trained for 3 classes and 3 channels, but fashion-mnist has 10 classes and 1 channels")


def test_a_damaged_run_of_a_study_names_the_one_directory_to_delete(tmp_path, monkeypatch):
    import scalenet.study.runner
    from scalenet.training import NoCheckpointLeft
    from scalenet.study import StudyConfig, train_run

    def damaged(*a, **k):
        raise NoCheckpointLeft(tmp_path / "x", ["last.pt is cut off or damaged (unreadable)"])

    monkeypatch.setattr(scalenet.study.runner, "train", damaged)
    monkeypatch.setattr(scalenet.study.runner, "build_data", lambda *a, **k: None)
    structure = Structure.from_channels([[4, 2, 2, 0]], (1,), stem="small", width=8, image_size=28)
    payload = {"config": {**StudyConfig(data="fashion-mnist").settings(), "arms": ["learned"]}, "out": str(tmp_path),
               "arm": "learned", "seed": 0, "structure": structure.to_json()}
    with pytest.raises(NoCheckpointLeft, match=f"delete {tmp_path / 'runs' / 'learned-seed0'} and run the study again"):
        train_run(payload)
