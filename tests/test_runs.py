"""The shared run layer: run directories, the epoch step, and the loop both tasks use."""

import json

import pytest
import torch
from torch import nn

from scalenet.checkpoint import read_state_dict
from scalenet.data import ShardSampler
from scalenet.runs import DistContext, RunDir, TrainingError, Updater, check_same_run, fit, in_processes, train_one_epoch


class Batches:
    """(inputs, targets, skipped) batches over fixed tensors, with a ShardSampler."""

    def __init__(self, x, y, batch_size, skipped=()):
        self.x, self.y, self.batch_size, self.skipped = x, y, batch_size, list(skipped)
        self.sampler = ShardSampler(len(y), shuffle=True, seed=0)

    def __len__(self):
        return len(self.y) // self.batch_size

    def __iter__(self):
        idx = torch.tensor(self.sampler.indices())
        for i in range(len(self)):
            b = idx[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.x[b], self.y[b], self.skipped[i] if i < len(self.skipped) else 0


class Regression:
    """A toy task: mean-squared error; 'validation' is minus the training data's loss."""

    label, checkpoint_format, train_prefix, best_key, metric, initial_best = "toy", "toy", "train_", "best", "val_score", -1e9
    advice = "try less"

    def __init__(self, x, y):
        self.x, self.y = x, y

    def step(self, net, x, y):
        return {"loss": ((net(x).squeeze(1) - y) ** 2).mean()}

    def validate(self, net):
        with torch.no_grad():
            return {"val_score": -float(self.step(net, self.x, self.y)["loss"])}

    def describe(self, record):
        return f", score {record['val_score']:.3f}"

    def identity(self):
        return {"shape": [2, 1]}

    def identity_of(self, ckpt):
        return {"shape": ckpt["shape"]}

    def checkpoint(self, record):
        return {"shape": [2, 1]}


def _setup(seed=0):
    g = torch.Generator().manual_seed(0)  # the same data every time
    x = torch.randn(64, 2, generator=g)
    y = x @ torch.tensor([1.5, -2.0]) + 0.1 * torch.randn(64, generator=g)
    torch.manual_seed(seed)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    updater = Updater(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), torch.amp.GradScaler("cpu", enabled=False))
    return model, updater, Batches(x, y, 8), Regression(x, y)


def test_run_dir_refuses_to_overwrite_and_to_resume_nothing(tmp_path):
    run = RunDir(tmp_path / "run", "toy")
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint at"):
        run.prepare(resume=True)
    run.prepare(resume=False)
    run.save({"format": "toy", "model": {}}, {"epoch": 1}, improved=False)
    with pytest.raises(ValueError, match="already holds a run .* pass --resume"):
        run.prepare(resume=False)
    run.prepare(resume=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        RunDir(tmp_path / "file", "toy").prepare(resume=False)
    with pytest.raises(ValueError, match="not a other checkpoint"):
        RunDir(tmp_path / "run", "other").read()


def test_metrics_are_cut_back_to_the_resumed_epoch(tmp_path):
    run = RunDir(tmp_path, "toy")
    for e in (1, 2, 3):
        run.save({"format": "toy", "model": {}, "epoch": e}, {"epoch": e}, improved=e == 2)
    assert [r["epoch"] for r in run.read_metrics(upto=2)] == [1, 2]
    run.reset_metrics(run.read_metrics(upto=2))
    assert [json.loads(line)["epoch"] for line in run.metrics_file.read_text().splitlines()] == [1, 2]
    assert read_state_dict(run.best)["epoch"] == 2 and read_state_dict(run.last)["epoch"] == 3


def test_check_same_run_names_what_differs(tmp_path):
    check_same_run(tmp_path, {"structure": 1, "classes": 2}, {"structure": 1, "classes": 2}, "x")
    with pytest.raises(ValueError, match=r"holds a run with a different classes; do this"):
        check_same_run(tmp_path / "last.pt", {"structure": 1, "classes": 2}, {"structure": 1, "classes": 3}, "do this")


def test_train_one_epoch_weights_by_batch_size_counts_skips_and_adds_the_regulariser():
    model, updater, loader, task = _setup()
    loader.skipped = [1, 0, 2]
    d = DistContext()
    seen = []

    def step(net, x, y):
        seen.append(len(y))
        return {"loss": torch.tensor(float(len(seen)), requires_grad=True), "part": torch.tensor(2.0)}

    stats = train_one_epoch(model, loader, step, updater, epoch=0, desc="t", kept="k", advice="a", d=d,
                            regularizer=lambda: torch.tensor(0.5), progress=False)
    assert seen == [8] * 8 and stats["images"] == 64 and stats["skipped"] == 3
    assert stats["loss"] == pytest.approx(sum(range(1, 9)) / 8 + 0.5) and stats["part"] == 2.0


def test_a_diverged_loss_says_where_and_what_is_kept():
    model, updater, loader, task = _setup()
    step = lambda net, x, y: {"loss": net(x).sum() * float("nan")}  # noqa: E731
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 3, step 1; last.pt is kept; try less"):
        train_one_epoch(model, loader, step, updater, epoch=2, desc="t", kept="last.pt is kept", advice="try less",
                        d=DistContext(), progress=False)


def test_fit_learns_saves_best_and_resumes_exactly(tmp_path):
    model, updater, loader, task = _setup()
    run = RunDir(tmp_path / "a", "toy")
    run.prepare(resume=False)
    straight = fit(task, model, updater, loader, epochs=4, run=run, d=DistContext(), progress=False)
    assert straight.metrics[-1]["train_loss"] < straight.metrics[0]["train_loss"]
    assert straight.best == max(r["val_score"] for r in straight.metrics)
    assert (tmp_path / "a" / "model.safetensors").is_file()

    model, updater, loader, task = _setup()
    run = RunDir(tmp_path / "b", "toy")
    run.prepare(resume=False)
    fit(task, model, updater, loader, epochs=2, run=run, d=DistContext(), progress=False)
    model, updater, loader, task = _setup(seed=5)  # other weights and RNG: the checkpoint must restore them
    resumed = fit(task, model, updater, loader, epochs=4, run=run, d=DistContext(), resume=True, progress=False)
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3, 4]
    a, b = read_state_dict(tmp_path / "a" / "last.pt"), read_state_dict(run.last)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k

    task.identity = lambda: {"shape": [3, 1]}
    with pytest.raises(ValueError, match="holds a run with a different shape"):
        fit(task, model, updater, loader, epochs=5, run=run, d=DistContext(), resume=True, progress=False)


def _square_and_threads(x):
    return x * x, torch.get_num_threads()


def test_in_processes_keeps_the_order_splits_the_cores_and_reports_each_result():
    seen = []
    results = in_processes(_square_and_threads, [1, 2, 3], jobs=2, on_result=lambda i, r: seen.append(i))
    assert [r[0] for r in results] == [1, 4, 9] and sorted(seen) == [0, 1, 2]
    assert all(r[1] == max(1, torch.get_num_threads() // 2) for r in results)
    assert [r[0] for r in in_processes(_square_and_threads, [4], jobs=1)] == [16]
    with pytest.raises(ValueError, match="--jobs must be 1 or more"):
        in_processes(_square_and_threads, [1], jobs=0)
