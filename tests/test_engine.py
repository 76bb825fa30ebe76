import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from scalenet.checkpoint import read_state_dict
from scalenet.cli import main
from scalenet.data import TensorBatches, TensorData, build_data
from scalenet.engine import TrainConfig, TrainingError, evaluate, model_from_checkpoint, train

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
    one_line_error(capsys, "--resume: no checkpoint at")
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
    assert main(["train", "--model", "scalenet50", "--data", str(folder), "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "cannot take 64 px images: block layer3.1 would pool its 4x4 map by 7")
    assert main(["train", "--model", "scalenet50", "--data", str(folder), "--out", str(tmp_path / "r"),
                 "--image-size", "16"]) == 2
    one_line_error(capsys, "image size 16 is too small for 4 stages")
