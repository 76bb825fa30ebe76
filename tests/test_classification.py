import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from scalenet.checkpoint import read_state_dict, save_weights
from scalenet.cli import main
from scalenet.data import TensorBatches, TensorData, build_data
from scalenet.training import TrainConfig, TrainingError, evaluate, model_from_checkpoint, train

from helpers import cli, free_port, make_image_folder, tiny_structure

FAST = dict(batch_size=8, lr=0.05, progress=False, tensorboard=False)


@pytest.fixture
def folder(tmp_path):
    return make_image_folder(tmp_path / "data", classes=3, per_class=12, size=16)


def test_metrics_file_checkpoints_and_logs(tmp_path, folder):
    run = tmp_path / "run"
    assert main(["train", "--model", str(tiny_structure().save(tmp_path / "t.json")), "--data", str(folder),
                 "--out", str(run), "--epochs", "2", "--batch-size", "8", "--no-progress"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"epoch", "train_loss", "val_top1", "val_top5", "lr", "seconds"} <= set(r)
        assert 0 <= r["val_top1"] <= r["val_top5"] <= 1 and r["seconds"] > 0
    assert records[-1]["lr"] < records[0]["lr"]  # cosine decay
    ckpt = read_state_dict(run / "last.pt")
    assert ckpt["epoch"] == 2 and {"model", "optimizer", "scheduler", "scaler", "rng", "structure", "args"} <= set(ckpt)
    assert (run / "best.pt").is_file() and (run / "model.safetensors").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_training_learns_the_synthetic_classes(tmp_path, folder):
    data = build_data(folder)
    result = train(tiny_structure(), data, TrainConfig(epochs=6, **FAST), tmp_path / "run")
    assert result.best_top1 >= 0.8  # three colours: chance is 1/3
    assert result.final["train_loss"] < result.metrics[0]["train_loss"]


@pytest.mark.numerics
def test_resume_after_sigkill_finishes_identically(tmp_path, folder):
    structure = tiny_structure().save(tmp_path / "t.json")
    args = ["train", "--model", str(structure), "--data", str(folder), "--epochs", "4", "--batch-size", "4",
            "--no-progress", "--seed", "3"]
    assert cli(*args, "--out", str(tmp_path / "straight")).returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "scalenet", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = read_state_dict(killed / "last.pt")["epoch"]
    assert 1 <= done < 4

    resumed = cli(*args, "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = read_state_dict(tmp_path / "straight" / "last.pt"), read_state_dict(killed / "last.pt")
    assert b["epoch"] == 4
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-6), k
    epochs = [json.loads(l)["epoch"] for l in (killed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]


def test_torchrun_two_processes(tmp_path, folder):
    structure = tiny_structure().save(tmp_path / "t.json")
    run = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "scalenet",
         "train", "--model", str(structure), "--data", str(folder), "--out", str(run), "--epochs", "2",
         "--batch-size", "4", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # rank 0 alone writes
    assert result.stdout.count("val top-1") == 3  # two epoch lines and the summary, from rank 0 only
    # the reduced validation accuracy is the accuracy on the whole validation set
    ev = cli("eval", "--checkpoint", str(run / "last.pt"), "--data", str(folder), "--json")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["top1"] == pytest.approx(records[-1]["val_top1"])


class TableModel(nn.Module):
    """Returns a fixed row of logits per sample; the sample index is the image's pixel value."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].round().long()]


def test_eval_against_a_hand_computed_case():
    # 7 classes. Sample 0: label ranked 1st; 1: ranked 2nd; 2: ranked 5th; 3: ranked 6th.
    table = [
        [9, 1, 2, 3, 4, 5, 0],
        [8, 9, 1, 2, 3, 0, 0],
        [5, 4, 3, 2, 1, 0, -1],
        [6, 5, 4, 3, 2, 1, 0],
    ]
    labels = [0, 0, 4, 5]
    data = TensorData(torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 1, 2, 2).clone(), torch.tensor(labels))
    loader = TensorBatches(data, batch_size=3, mean=[0.0], std=[1 / 255], train=False)
    out = evaluate(TableModel(table), loader)
    assert out["top1"] == 1 / 4 and out["top5"] == 3 / 4 and out["images"] == 4
    expected_loss = sum(torch.log_softmax(torch.tensor(r, dtype=torch.float), 0)[l].neg().item() for r, l in zip(table, labels)) / 4
    assert out["loss"] == pytest.approx(expected_loss)


def test_eval_cli_uses_the_structure_in_the_checkpoint(tmp_path, folder, capsys):
    run = tmp_path / "run"
    train(tiny_structure(name="from-ckpt"), build_data(folder), TrainConfig(epochs=1, **FAST), run)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--data", str(folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model, ckpt = model_from_checkpoint(run / "best.pt")
    assert model.structure.name == "from-ckpt"
    expected = evaluate(model, build_data(folder).loader("val", 16))
    assert out["top1"] == pytest.approx(expected["top1"]) and out["top5"] == pytest.approx(expected["top5"])
    assert out["top1"] == pytest.approx(ckpt["val_top1"])


def test_diverging_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, folder, monkeypatch):
    data = build_data(folder)
    steps_per_epoch = len(data.loader("train", 8))
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > steps_per_epoch and kwargs.get("reduction") != "sum" else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2, step 1; .*last.pt \(epoch 1\) is kept"):
        train(tiny_structure(), data, TrainConfig(epochs=3, **FAST), run)
    assert read_state_dict(run / "last.pt")["epoch"] == 1


def test_unreadable_images_are_skipped_and_counted(tmp_path, folder, capsys):
    (folder / "class_0" / "broken.png").write_bytes(b"not an image")
    (folder / "class_1" / "broken.png").write_bytes(b"\x89PNG truncated")
    data = build_data(folder)
    result = train(tiny_structure(), data, TrainConfig(epochs=2, **FAST), tmp_path / "run")
    # every epoch's record counts what it skipped (train and validation); the note is printed once
    for r in result.metrics:
        assert 1 <= r["skipped_images"] <= 2  # a broken file may fall outside the epoch's full batches
    assert capsys.readouterr().out.count("unreadable images") == 1


def test_train_val_layout_and_flat_split_are_deterministic(tmp_path):
    tv = build_data(make_image_folder(tmp_path / "tv", layout="train_val", per_class=4))
    assert len(tv.train) == 12 and len(tv.val) == 12 and tv.num_classes == 3 and tv.image_size == 16
    flat = make_image_folder(tmp_path / "flat", per_class=10)
    a, b = build_data(flat, seed=1), build_data(flat, seed=2)
    assert a.val.samples == b.val.samples and len(a.val) == 3 and len(a.train) == 27


# ---------------------------------------------------------------------------- bad input
def one_line_error(capsys, expected):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scalenet: error: ") and expected in err[0], err


def test_missing_data_directory(tmp_path, capsys):
    assert main(["train", "--model", "scalenet50", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "data directory not found")


def test_empty_class_folder(tmp_path, folder, capsys):
    (folder / "class_empty").mkdir()
    model = str(tiny_structure().save(tmp_path / "t.json"))
    assert main(["train", "--model", model, "--data", str(folder), "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "class_empty has no images")


def test_single_class(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "one", classes=1)
    assert main(["train", "--model", str(tiny_structure().save(tmp_path / "t.json")), "--data", str(folder),
                 "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "a single class")


def test_checkpoint_that_is_not_a_checkpoint(tmp_path, folder, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_text("hello")
    assert main(["eval", "--checkpoint", str(bad), "--data", str(folder)]) == 2
    one_line_error(capsys, "not a readable PyTorch checkpoint")
    weights = tmp_path / "weights.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, weights)
    assert main(["eval", "--checkpoint", str(weights), "--data", str(folder)]) == 2
    one_line_error(capsys, "not a scalenet training checkpoint")


def test_resume_with_a_different_model(tmp_path, folder, capsys):
    run = tmp_path / "run"
    base = ["--data", str(folder), "--out", str(run), "--epochs", "1", "--batch-size", "8", "--no-progress"]
    assert main(["train", "--model", str(tiny_structure().save(tmp_path / "a.json")), *base]) == 0
    other = tiny_structure()
    other = type(other).from_channels([[4, 2, 1, 1], [3, 3, 2, 0]], layers=(1, 1), stem="small", width=4, image_size=16)
    capsys.readouterr()
    assert main(["train", "--model", str(other.save(tmp_path / "b.json")), *base, "--epochs", "2", "--resume"]) == 2
    one_line_error(capsys, "holds a run with a different structure; resume with the same model")


def test_resume_without_checkpoint_and_existing_run(tmp_path, folder, capsys):
    model = str(tiny_structure().save(tmp_path / "t.json"))
    base = ["train", "--model", model, "--data", str(folder), "--epochs", "1", "--batch-size", "8", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "fresh"), "--resume"]) == 2
    one_line_error(capsys, "--resume: no checkpoint in")
    assert main([*base, "--out", str(tmp_path / "run")]) == 0
    before = (tmp_path / "run" / "last.pt").read_bytes()
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "run")]) == 2  # would overwrite a finished run
    one_line_error(capsys, "already holds a run")
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_unwritable_output_directory(tmp_path, folder, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    model = str(tiny_structure().save(tmp_path / "t.json"))
    assert main(["train", "--model", model, "--data", str(folder), "--out", str(blocker / "run")]) == 2
    one_line_error(capsys, "is not writable")
    assert main(["train", "--model", model, "--data", str(folder), "--out", str(blocker)]) == 2
    one_line_error(capsys, "is a file")


def test_bad_input_through_the_real_process_has_no_traceback(tmp_path):
    result = cli("train", "--model", "scalenet50", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"scalenet: error: data directory not found: {tmp_path / 'nope'} "
                                                  "(give an ImageFolder directory or one of: fashion-mnist)"]


def test_model_too_deep_for_the_image_size(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "data", per_class=2, size=64)
    assert main(["train", "--model", "scalenet50", "--data", str(folder), "--out", str(tmp_path / "r"),
                 "--image-size", "16"]) == 2
    one_line_error(capsys, "image size 16 is too small for 4 stages")


# ---------------------------------------------------------------------------- fine-tuning
def test_init_loads_what_fits_resets_another_classifier_and_names_what_does_not(tmp_path, folder, capsys):
    from scalenet import create_model
    from scalenet.checkpoint import CheckpointError
    from scalenet.training import start_from

    run = tmp_path / "a"
    train(tiny_structure(), build_data(folder), TrainConfig(epochs=1, **FAST), run)  # 3 classes
    source = read_state_dict(run / "last.pt")["model"]
    for path in (run / "last.pt", save_weights(source, tmp_path / "plain.safetensors")):
        model = create_model(tiny_structure(), num_classes=2)
        fresh_fc = model.fc.weight.detach().clone()
        start_from(model, path, num_classes=2)
        assert torch.equal(model.conv1.weight, source["conv1.weight"])
        assert torch.equal(model.layer2[0].bn2["0"].running_var, source["layer2.0.bn2.0.running_var"])
        assert torch.equal(model.fc.weight, fresh_fc)  # 3 classes there, 2 here: the classifier starts from scratch
        assert "its classifier does not fit 2 classes" in capsys.readouterr().out
    same = create_model(tiny_structure(), num_classes=3)
    start_from(same, run / "last.pt", num_classes=3)
    assert torch.equal(same.fc.weight, source["fc.weight"]) and capsys.readouterr().out == ""
    other = create_model(tiny_structure(image_size=16).__class__.from_channels(
        [[4, 2, 1, 2], [3, 2, 2, 0]], layers=(1, 1), stem="small", width=4, image_size=16), num_classes=3)
    with pytest.raises(CheckpointError, match=r"does not fit the model to start from: .*layer1.0.conv2.3.weight"):
        start_from(other, run / "last.pt", num_classes=3)
    with pytest.raises(FileNotFoundError, match="--init: weights not found"):
        start_from(same, tmp_path / "nope.pth", num_classes=3)


def test_freeze_stages_trains_only_the_later_stages_and_the_head(tmp_path, folder):
    from scalenet import create_model

    structure = tiny_structure()
    start = create_model(structure, num_classes=3)
    torch.manual_seed(0)
    result = train(structure, build_data(folder), TrainConfig(epochs=1, freeze_stages=1, **FAST), tmp_path / "r")
    torch.manual_seed(0)
    before = create_model(structure, num_classes=3).state_dict()  # the seeded start (train seeds 0 the same way)
    after = result.model.state_dict()
    for k in after:
        frozen = k.startswith(("conv1.", "bn1.", "layer1."))
        changed = not torch.equal(before[k].float(), after[k].float())
        if k.endswith("num_batches_tracked"):
            continue
        assert changed != frozen, k  # frozen: weights and BN statistics untouched; the rest trained
    assert start is not None
    with pytest.raises(ValueError, match="freeze_stages must be between 0 and 2"):
        create_model(structure).freeze_stages(3)


def test_one_epoch_from_related_weights_beats_one_epoch_from_scratch(tmp_path):
    # task A: 40 images per colour class; task B: 10 new images per class, drawn with another seed
    a = build_data(make_image_folder(tmp_path / "a", classes=3, per_class=40, size=16, seed=1))
    b = build_data(make_image_folder(tmp_path / "b", classes=3, per_class=10, size=16, seed=2))
    cfg = dict(batch_size=8, lr=0.05, progress=False, tensorboard=False)
    train(tiny_structure(), a, TrainConfig(epochs=4, **cfg), tmp_path / "pre")
    for seed in (0, 1):
        scratch = train(tiny_structure(), b, TrainConfig(epochs=1, seed=seed, **cfg), tmp_path / f"scratch{seed}")
        tuned = train(tiny_structure(), b, TrainConfig(epochs=1, seed=seed, init=str(tmp_path / "pre" / "best.pt"), **cfg),
                      tmp_path / f"tuned{seed}")
        # measured: scratch 33% top-1 and loss 0.8-1.2 after its three steps; from task A's weights 100% and 0.08
        assert tuned.final["val_top1"] > scratch.final["val_top1"] + 0.3, (tuned.final, scratch.final)
        assert tuned.final["val_loss"] < 0.5 * scratch.final["val_loss"]


def test_cli_init_and_freeze_reach_the_config(tmp_path, folder, capsys):
    run = tmp_path / "a"
    assert main(["train", "--model", str(tiny_structure().save(tmp_path / "t.json")), "--data", str(folder),
                 "--out", str(run), "--epochs", "1", "--batch-size", "8", "--no-progress"]) == 0
    assert main(["train", "--model", str(tmp_path / "t.json"), "--data", str(folder), "--out", str(tmp_path / "b"),
                 "--epochs", "1", "--batch-size", "8", "--init", str(run / "best.pt"), "--freeze-stages", "1",
                 "--no-progress"]) == 0
    args = read_state_dict(tmp_path / "b" / "last.pt")["args"]
    assert args["init"] == str(run / "best.pt") and args["freeze_stages"] == 1
    capsys.readouterr()
    assert main(["train", "--model", str(tmp_path / "t.json"), "--data", str(folder), "--out", str(tmp_path / "c"),
                 "--init", str(tmp_path / "missing.pt"), "--no-progress"]) == 2
    one_line_error(capsys, "--init: weights not found")


def test_fault_tolerance_bad_input_is_one_line_and_overwrites_nothing(tmp_path, folder, capsys):
    model = str(tiny_structure().save(tmp_path / "t.json"))
    base = ["train", "--model", model, "--epochs", "1", "--batch-size", "8", "--no-progress"]
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SystemExit) as exit_:
            main([*base, "--data", str(folder), "--out", str(tmp_path / "r"), "--save-every", bad])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        shown = repr(bad) if bad == "soon" else bad
        assert len(err) == 1 and f"argument --save-every: expected a positive number, got {shown}" in err[0], err
    with pytest.raises(SystemExit):
        main([*base, "--data", str(folder), "--out", str(tmp_path / "r"), "--resume", "always"])
    assert "expected nothing or 'auto', got 'always'" in capsys.readouterr().err

    run = tmp_path / "run"
    assert main([*base, "--data", str(folder), "--out", str(run), "--resume", "auto"]) == 0  # nothing there: fresh
    before = {p.name: p.read_bytes() for p in run.glob("*.pt")}
    other = type(tiny_structure()).from_channels([[4, 2, 1, 1], [3, 3, 2, 0]], layers=(1, 1), stem="small", width=4,
                                                 image_size=16)
    capsys.readouterr()
    assert main(["train", "--model", str(other.save(tmp_path / "o.json")), *base[3:], "--data", str(folder),
                 "--out", str(run), "--resume", "auto", "--epochs", "2"]) == 2
    one_line_error(capsys, "holds a run with a different structure")
    elsewhere = make_image_folder(tmp_path / "other-data", classes=3, per_class=12, size=16, seed=1)
    assert main([*base, "--data", str(elsewhere), "--out", str(run), "--resume", "auto", "--epochs", "2"]) == 2
    one_line_error(capsys, f"holds a run with a different data set ({folder} there, {elsewhere} here)")
    assert {p.name: p.read_bytes() for p in run.glob("*.pt")} == before
