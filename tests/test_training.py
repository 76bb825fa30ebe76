"""The shared run layer: run directories, the epoch step, and the loop both tasks use."""

import json
import os
import signal

import pytest
import torch
from torch import nn

from scalenet.checkpoint import CheckpointError, read_state_dict
from scalenet.data import ShardSampler
from scalenet.training import (
    PREEMPTED_EXIT_CODE, CheckpointSaver, DistContext, Preempted, RunDir, TrainingError, Updater, auto_jobs,
    check_jobs, check_same_run, fit, gpu_slots, in_processes, jobs_for, train_one_epoch,
)


def saver(run, **kw):
    return CheckpointSaver(run, DistContext(), **kw)


class Batches:
    """(inputs, targets, skipped) batches over fixed tensors, with a ShardSampler."""

    def __init__(self, x, y, batch_size, skipped=()):
        self.x, self.y, self.batch_size, self.skipped = x, y, batch_size, list(skipped)
        self.sampler = ShardSampler(len(y), shuffle=True, seed=0)

    def __len__(self):
        return len(self.sampler) // self.batch_size

    def __iter__(self):
        idx = torch.tensor(self.sampler.indices())
        for i in range(self.sampler.start // self.batch_size, len(idx) // self.batch_size):
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
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint in"):
        run.prepare(resume=True)
    assert run.prepare(resume="auto") is False  # nothing there: auto starts fresh
    assert run.prepare(resume=False) is False
    run.save_step({"format": "toy", "model": {}, "epoch": 0, "step": 3})
    with pytest.raises(ValueError, match=r"already holds a run \(step-e0001-s0000003.pt\); pass resume=True"):
        run.prepare(resume=False)  # a step checkpoint alone is a run too
    run.save({"format": "toy", "model": {}}, {"epoch": 1}, improved=False)
    with pytest.raises(ValueError, match=r"already holds a run \(last.pt\); pass resume=True"):
        run.prepare(resume=False)
    assert run.prepare(resume=True) is True and run.prepare(resume="auto") is True
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
    with pytest.raises(ValueError, match=r"holds a run with a different classes \(2 there, 3 here\); do this"):
        check_same_run(tmp_path / "last.pt", {"structure": 1, "classes": 2}, {"structure": 1, "classes": 3}, "do this")
    rows = [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match=r"holds a run with a different structure; do this"):  # not a scalar: named only
        check_same_run(tmp_path / "last.pt", {"structure": rows, "classes": 2}, {"structure": rows[::-1], "classes": 2},
                       "do this")
    with pytest.raises(ValueError, match=r"holds a run with a different data set; do this"):  # too long to show
        check_same_run(tmp_path / "last.pt", {"data set": "a" * 121}, {"data set": "b"}, "do this")
    check_same_run(tmp_path, {"structure": 1}, {"structure": 1, "data set": "a"}, "x")  # older checkpoints lack it


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


@pytest.mark.numerics
def test_fit_learns_saves_best_and_resumes_exactly(tmp_path):
    model, updater, loader, task = _setup()
    run = RunDir(tmp_path / "a", "toy")
    run.prepare(resume=False)
    straight = fit(task, model, updater, loader, saver(run), epochs=4, d=DistContext(), progress=False)
    assert straight.metrics[-1]["train_loss"] < straight.metrics[0]["train_loss"]
    assert straight.best == max(r["val_score"] for r in straight.metrics)
    assert (tmp_path / "a" / "model.safetensors").is_file()

    model, updater, loader, task = _setup()
    run = RunDir(tmp_path / "b", "toy")
    run.prepare(resume=False)
    fit(task, model, updater, loader, saver(run), epochs=2, d=DistContext(), progress=False)
    model, updater, loader, task = _setup(seed=5)  # other weights and RNG: the checkpoint must restore them
    resumed = fit(task, model, updater, loader, saver(run), epochs=4, d=DistContext(), resume=True, progress=False)
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3, 4]
    a, b = read_state_dict(tmp_path / "a" / "last.pt"), read_state_dict(run.last)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k

    task.identity = lambda: {"shape": [3, 1]}
    with pytest.raises(ValueError, match="holds a run with a different shape"):
        fit(task, model, updater, loader, saver(run), epochs=5, d=DistContext(), resume=True, progress=False)


def test_an_epoch_checkpoint_is_written_before_its_log_line_and_carries_it(tmp_path, monkeypatch):
    """A kill in an epoch's save leaves a run that resumes: the log is at most one line behind
    last.pt, and the line comes back from the checkpoint."""
    import scalenet.training.checkpointing as checkpointing

    timing = ("seconds", "train_seconds", "images_per_s")
    model, updater, loader, task = _setup()
    run = RunDir(tmp_path / "a", "toy")
    run.prepare(resume=False)
    straight = fit(task, model, updater, loader, saver(run), epochs=2, d=DistContext(), progress=False).metrics

    real_write = checkpointing.atomic_write
    order = []

    def killed_after_the_checkpoint(path, write):  # what save() has done when the kill comes
        real_write(path, write)
        order.append((path.name, run_b.metrics_file.read_text().count("\n") if run_b.metrics_file.exists() else 0))
        if path.name == "last.pt":
            raise Crash
    model, updater, loader, task = _setup()
    run_b = RunDir(tmp_path / "b", "toy")
    run_b.prepare(resume=False)
    monkeypatch.setattr(checkpointing, "atomic_write", killed_after_the_checkpoint)
    with pytest.raises(Crash):
        fit(task, model, updater, loader, saver(run_b), epochs=2, d=DistContext(), progress=False)
    assert ("last.pt", 0) in order and not run_b.metrics_file.read_text()  # last.pt first, then the line
    monkeypatch.setattr(checkpointing, "atomic_write", real_write)
    assert run_b.prepare(resume="auto") is True
    model, updater, loader, task = _setup(seed=5)
    resumed = fit(task, model, updater, loader, saver(run_b), epochs=2, d=DistContext(), resume=True,
                  progress=False).metrics
    strip = lambda records: [{k: v for k, v in r.items() if k not in timing} for r in records]  # noqa: E731
    assert strip(resumed) == strip(straight) and [r["epoch"] for r in resumed] == [1, 2]
    logged = [json.loads(line) for line in run_b.metrics_file.read_text().splitlines()]
    assert strip(logged) == strip(straight)


def _square_and_threads(x):
    return x * x, torch.get_num_threads()


def test_in_processes_keeps_the_order_splits_the_cores_and_reports_each_result():
    seen = []
    results = in_processes(_square_and_threads, [1, 2, 3], jobs=2, on_result=lambda i, r: seen.append(i))
    assert [r[0] for r in results] == [1, 4, 9] and sorted(seen) == [0, 1, 2]
    assert all(r[1] == max(1, torch.get_num_threads() // 2) for r in results)
    assert [r[0] for r in in_processes(_square_and_threads, [4], jobs=1)] == [16]
    with pytest.raises(ValueError, match="jobs must be 1 or more"):
        in_processes(_square_and_threads, [1], jobs=0)


def _gpu_of_worker(seconds):
    """What a worker was shown (its CUDA_VISIBLE_DEVICES), by which process, and when it ran."""
    import time

    start = time.monotonic()
    time.sleep(seconds)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid(), start, time.monotonic()


def _check_one_gpu_per_worker(results, gpus):
    assert {r[0] for r in results} == set(gpus)  # every GPU was used
    by_worker = {}
    for gpu, pid, _, _ in results:
        assert by_worker.setdefault(pid, gpu) == gpu  # a worker keeps its one GPU
    for a in results:  # trainings running at the same time never share a GPU
        for b in results:
            if a is not b and a[2] < b[3] and b[2] < a[3]:
                assert a[0] != b[0], (a, b)


def test_each_worker_owns_one_gpu_and_trainings_at_the_same_time_never_share_one():
    # the placement is an environment variable set before CUDA starts: real worker processes
    # show it on a machine without a GPU
    results = in_processes(_gpu_of_worker, [0.4, 0.1, 0.3, 0.2, 0.1], jobs=2, devices=["3", "5"])
    _check_one_gpu_per_worker(results, ["3", "5"])
    with pytest.raises(ValueError, match="jobs 3: only 2 GPU"):
        in_processes(_gpu_of_worker, [0.0] * 3, jobs=3, devices=["3", "5"])


def test_under_torchrun_every_training_runs_alone_with_ddp_and_jobs_is_refused(monkeypatch):
    assert jobs_for(None, 16, "study runs") == auto_jobs(16) and jobs_for(3, 16, "study runs") == 3
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert jobs_for(None, 16, "study runs") == 1 and jobs_for(1, 16, "study runs") == 1
    with pytest.raises(ValueError, match="under torchrun the study runs train one after another, each with DDP across "
                                         "all ranks; drop jobs"):
        jobs_for(2, 16, "study runs")


@pytest.fixture
def two_gpus(monkeypatch):
    """CUDA faked with two GPUs, the caller's CUDA_VISIBLE_DEVICES naming 2 and 7."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,7")


def test_with_gpus_the_default_is_one_training_per_gpu_of_those_the_caller_shows(two_gpus, monkeypatch):
    assert gpu_slots() == ["2", "7"]
    assert auto_jobs(16) == 2 and auto_jobs(1) == 1
    results = in_processes(_gpu_of_worker, [0.3, 0.1, 0.2, 0.1], jobs=2)  # devices default to gpu_slots()
    _check_one_gpu_per_worker(results, ["2", "7"])
    check_jobs(2)
    with pytest.raises(ValueError, match=r"jobs 3: this machine has 2 GPU\(s\) \(CUDA_VISIBLE_DEVICES 2,7\)"):
        check_jobs(3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_slots() == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_slots() == [] and auto_jobs(16) == max(1, min(16, torch.get_num_threads()))


# ---------------------------------------------------------------------------- inside an epoch: step checkpoints, SIGTERM
class Crash(Exception):
    pass


class Interrupted(Batches):
    """Batches that call ``action`` before yielding the ``at``-th batch of the run."""

    def __init__(self, loader, at, action):
        super().__init__(loader.x, loader.y, loader.batch_size)
        self.at, self.action, self.count = at, action, 0

    def __iter__(self):
        for batch in super().__iter__():
            self.count += 1
            if self.count == self.at:
                self.action()
            yield batch


def _crash():
    raise Crash


def _straight(tmp_path, epochs=3):
    model, updater, loader, task = _setup()
    run = RunDir(tmp_path / "straight", "toy")
    run.prepare(resume=False)
    return fit(task, model, updater, loader, saver(run, save_every=None), epochs=epochs, d=DistContext(), progress=False)


def _same_weights(a, b):
    wa, wb = read_state_dict(a)["model"], read_state_dict(b)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.numerics
def test_a_run_resumed_inside_an_epoch_ends_with_the_same_weights_and_records(tmp_path, capsys):
    straight = _straight(tmp_path)
    model, updater, loader, task = _setup()
    run = RunDir(tmp_path / "b", "toy")
    run.prepare(resume=False)
    with pytest.raises(Crash):  # 8 steps per epoch: the 11th batch is epoch 2's third
        fit(task, model, updater, Interrupted(loader, 11, _crash), saver(run, save_every=1e-9), epochs=3, d=DistContext(), progress=False)  # a step checkpoint after every step
    assert [pos for pos, _ in run.step_files()] == [(1, 2), (1, 1)]  # at most two kept, the newest
    assert read_state_dict(run.last)["epoch"] == 1
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]

    model, updater, loader, task = _setup(seed=5)  # other weights and RNG: the checkpoint must restore them
    capsys.readouterr()
    resumed = fit(task, model, updater, loader, saver(run), epochs=3, d=DistContext(), resume=True, progress=False)
    assert "from step-e0002-s0000002.pt (epoch 2, step 2)" in capsys.readouterr().out
    _same_weights(tmp_path / "straight" / "last.pt", run.last)
    # the resumed epoch's record covers the whole epoch, the steps before the crash included
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3]
    for a, b in zip(straight.metrics, resumed.metrics):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6) and b["val_score"] == a["val_score"]


def test_a_truncated_checkpoint_falls_back_to_the_previous_complete_one(tmp_path, capsys):
    _straight(tmp_path)
    model, updater, loader, task = _setup()
    run = RunDir(tmp_path / "b", "toy")
    run.prepare(resume=False)
    with pytest.raises(Crash):
        fit(task, model, updater, Interrupted(loader, 12, _crash), saver(run, save_every=1e-9), epochs=3, d=DistContext(), progress=False)
    newest = run.step_files()[0][1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # cut off mid-write
    model, updater, loader, task = _setup(seed=5)
    capsys.readouterr()
    fit(task, model, updater, loader, saver(run), epochs=3, d=DistContext(), resume=True, progress=False)
    out = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(out) == 1 and "step-e0002-s0000003.pt is cut off or damaged (unreadable)" in out[0]
    assert "resuming from step-e0002-s0000002.pt instead (epoch 2, step 2)" in out[0]
    _same_weights(tmp_path / "straight" / "last.pt", run.last)

    for f in run.path.glob("*.pt"):  # nothing complete left
        f.write_bytes(f.read_bytes()[:100])
    model, updater, loader, task = _setup()
    with pytest.raises(CheckpointError, match=r"no complete checkpoint left in \S+ to resume from: last.pt is cut off or damaged \(unreadable\); step-e"):
        fit(task, model, updater, loader, saver(run), epochs=3, d=DistContext(), resume=True, progress=False)


@pytest.mark.numerics
def test_sigterm_finishes_the_step_saves_the_position_and_the_run_continues_exactly(tmp_path):
    _straight(tmp_path)
    model, updater, loader, task = _setup()
    run = RunDir(tmp_path / "b", "toy")
    run.prepare(resume=False)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as stop:
        fit(task, model, updater, Interrupted(loader, 11, lambda: os.kill(os.getpid(), signal.SIGTERM)), saver(run, save_every=None), epochs=3, d=DistContext(), progress=False)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is fit's only while it runs
    assert stop.value.exit_code == 143 == PREEMPTED_EXIT_CODE
    assert stop.value.checkpoint.name == "step-e0002-s0000003.pt"  # the 11th batch still trained
    assert [pos for pos, _ in run.step_files()] == [(1, 3)]  # save_every=None: only SIGTERM saved inside the epoch
    assert "--resume auto" in str(stop.value)

    model, updater, loader, task = _setup(seed=5)
    assert run.prepare(resume="auto")
    fit(task, model, updater, loader, saver(run), epochs=3, d=DistContext(), resume=True, progress=False)
    _same_weights(tmp_path / "straight" / "last.pt", run.last)


def test_save_every_must_be_positive(tmp_path):
    model, updater, loader, task = _setup()
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match=f"save_every must be a positive number of minutes, got {bad}"):
            fit(task, model, updater, loader, saver(RunDir(tmp_path / "r", "toy"), save_every=bad), epochs=1, d=DistContext(), progress=False)


def test_shard_sampler_starts_inside_an_epoch_and_seeds_each_sample():
    s = ShardSampler(20, shuffle=True, seed=4, rank=1, world_size=2, sample_seeds=True)
    s.set_epoch(3)
    full = list(s)
    assert len(full) == 10 and all(seed == s.sample_seed(i) for i, seed in full)
    s.set_epoch(3, start=6)
    assert list(s) == full[6:] and len(s) == 4
    s.set_epoch(4)
    assert s.start == 0 and [i for i, _ in s] != [i for i, _ in full]
    assert s.sample_seed(5) != ShardSampler(20, shuffle=True, seed=4, sample_seeds=True).sample_seed(6)
    # epochs are counted from 1 in messages (set_epoch takes the 0-based index, as fit passes it)
    with pytest.raises(ValueError, match="cannot start epoch 5 at sample 11: this process's share of the epoch has 10"):
        s.set_epoch(4, start=11)


def test_the_checkpoint_saver_owns_sigterm_tensorboard_and_the_epoch_files(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    run = RunDir(tmp_path / "r", "toy")
    run.prepare(resume=False)
    with saver(run, tensorboard=True).start(0, []) as writing:
        assert signal.getsignal(signal.SIGTERM) is not before  # caught while the epochs run
        writing.end_epoch(lambda: {"format": "toy", "epoch": 1, "model": {}}, {"epoch": 1, "val_score": 0.5}, True, more=True)
    assert signal.getsignal(signal.SIGTERM) is before  # and given back after
    assert read_state_dict(run.last)["epoch"] == 1 and run.best.is_file()
    assert [json.loads(line)["epoch"] for line in run.metrics_file.read_text().splitlines()] == [1]
    assert any((run.path / "tensorboard").iterdir())
