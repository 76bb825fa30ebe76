"""Supernets as ordinary training runs: run directories, --resume auto after a kill, supernets
trained elsewhere (--write-supernet, scalenet train, --from-runs), and torchrun."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scalenet import Structure
from scalenet.checkpoint import read_state_dict
from scalenet.cli import main

from helpers import make_image_folder, refused, torchrun

ALLOCATE = ["--layers", "1,1", "--width", "8", "--epochs", "2", "--batch-size", "8", "--seed", "3", "--no-progress"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("seeds") / "data", classes=3, per_class=16, size=16)


@pytest.fixture(scope="module")
def straight(folder):
    """An uninterrupted allocation of two supernets, one at a time."""
    (folder.parent / "straight").mkdir()
    out = folder.parent / "straight" / "s.json"
    assert main(["allocate", "--data", str(folder), "--out", str(out), "--repeats", "2", "--jobs", "1", *ALLOCATE]) == 0
    return out


def _sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.stem + ".scores.json").read_text())


def test_every_supernet_is_an_ordinary_run_scored_from_its_checkpoint(straight):
    runs = straight.with_name("s.runs")
    assert sorted(p.name for p in runs.iterdir()) == ["allocation.json", "supernet-0000", "supernet-0001"]
    dirs = sorted(runs.glob("supernet-*"))
    assert len(dirs) == 2
    for i, d in enumerate(dirs):
        assert {"last.pt", "best.pt", "metrics.jsonl", "model.safetensors"} <= {p.name for p in d.iterdir()}
        assert (d / "tensorboard").is_dir()
        records = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records] == [1, 2]
        assert _sidecar(straight)["runs"][i]["metrics"] == records  # the records are read from the run
        trained_on = read_state_dict(d / "last.pt")["trained_on"]  # where it trained, for a cluster's logs
        assert trained_on["world_size"] == 1 and trained_on["device"]


def test_a_run_whose_last_log_line_a_kill_kept_out_is_scored_with_that_line(straight, tmp_path):
    import shutil

    from scalenet.allocation.supernets import score_run

    run = tmp_path / "supernet-0000"
    shutil.copytree(straight.with_name("s.runs") / "supernet-0000", run)
    full = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text(json.dumps(full[0]) + "\n")  # killed after last.pt, before its line
    assert score_run(run)[0].metrics == full


def test_a_killed_allocation_resumes_retraining_only_the_interrupted_supernet(folder, straight, tmp_path):
    out = tmp_path / "k.json"
    cmd = [sys.executable, "-m", "scalenet", "allocate", "--data", str(folder), "--out", str(out), "--repeats", "2",
           "--jobs", "1", *ALLOCATE]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # kill during the second supernet, after its first epoch
        if line.startswith("supernet 2/2 epoch 1/2"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    first = out.with_name("k.runs") / "supernet-0000" / "last.pt"
    before = first.stat().st_mtime_ns
    refused_run = subprocess.run(cmd, capture_output=True, text=True)  # the runs are there: --resume auto, or refuse
    assert refused_run.returncode == 2 and "already holds supernet runs (supernet-0000); pass --resume auto" in refused_run.stderr
    again = subprocess.run(cmd + ["--resume", "auto"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stdout and "supernet 2/2 epoch 2/2" in again.stdout
    assert "supernet 1/2 epoch" not in again.stdout
    assert first.stat().st_mtime_ns == before  # the finished supernet was scored, not retrained
    assert Structure.load(out).rows == Structure.load(straight).rows
    a, b = _sidecar(out), _sidecar(straight)
    assert [r["scores"] for r in a["runs"]] == [r["scores"] for r in b["runs"]]


def test_supernets_trained_elsewhere_give_the_in_process_result(folder, straight, tmp_path, capsys):
    supernet = tmp_path / "supernet.json"
    assert main(["allocate", "--data", str(folder), "--write-supernet", str(supernet), "--layers", "1,1", "--width", "8"]) == 0
    trained = read_state_dict(straight.with_name("s.runs") / "supernet-0000" / "last.pt")["structure"]
    assert Structure.load(supernet).rows == Structure.from_json(trained).rows  # the supernet allocate trains
    runs = []
    for s in (3, 4):  # the seeds allocate --seed 3 --repeats 2 trains
        run = tmp_path / f"run{s}"
        assert main(["train", "--model", str(supernet), "--data", str(folder), "--epochs", "2", "--batch-size", "8",
                     "--seed", str(s), "--out", str(run), "--no-progress"]) == 0
        runs.append(str(run))
    out = tmp_path / "from.json"
    assert main(["allocate", "--from-runs", *runs, "--out", str(out)]) == 0
    assert Structure.load(out).rows == Structure.load(straight).rows
    assert [r["scores"] for r in _sidecar(out)["runs"]] == [r["scores"] for r in _sidecar(straight)["runs"]]
    assert _sidecar(out)["settings"]["seed"] == 3 and _sidecar(out)["settings"]["repeats"] == 2

    # refusals, one line each
    refused(capsys, ["allocate", "--from-runs", str(folder), "--out", tmp_path / "x.json"], "is not a training run")
    other = tmp_path / "other.json"
    Structure.from_channels([[4, 4, 4, 0], [8, 8, 8, 0]], (1, 1), stem="small", width=8, image_size=16).save(other)
    assert main(["train", "--model", str(other), "--data", str(folder), "--epochs", "1", "--batch-size", "8",
                 "--out", str(tmp_path / "other"), "--no-progress"]) == 0
    refused(capsys, ["allocate", "--from-runs", runs[0], str(tmp_path / "other"), "--out", tmp_path / "x.json"],
            "is a run of another structure than the supernet's")
    small = make_image_folder(tmp_path / "small", classes=3, per_class=8, size=16)
    assert main(["train", "--model", str(supernet), "--data", str(small), "--epochs", "2", "--batch-size", "8",
                 "--seed", "9", "--out", str(tmp_path / "small-run"), "--no-progress"]) == 0
    refused(capsys, ["allocate", "--from-runs", runs[0], str(tmp_path / "small-run"), "--out", tmp_path / "x.json"],
            "give runs on one data set")
    unfinished = json.loads((Path(runs[0]) / "metrics.jsonl").read_text().splitlines()[0])
    assert unfinished["epoch"] == 1
    import torch

    ckpt = torch.load(Path(runs[1]) / "last.pt", weights_only=True)
    ckpt["epoch"] = 1
    torch.save(ckpt, Path(runs[1]) / "last.pt")
    refused(capsys, ["allocate", "--from-runs", runs[0], runs[1], "--out", tmp_path / "x.json"],
            "is unfinished (epoch 1 of 2); finish it with scalenet train")
    refused(capsys, ["allocate", "--from-runs", runs[0], "--out", tmp_path / "x.json", "--repeats", "2"],
            "--repeats does not apply")


def test_a_folder_of_format_1_resumes_under_its_old_names(straight, folder, tmp_path, capsys):
    """Supernet runs started before format 2 (``seed-NNNN`` folders, ``allocation.json`` with
    ``seed_width``, ``seed_epochs``, ``seed_rows``) are scored, not retrained, by a strict resume."""
    import shutil

    from scalenet.allocation import RENAMED_KEYS

    old = tmp_path / "old.runs"
    shutil.copytree(straight.with_name("s.runs"), old)
    for d in sorted(old.glob("supernet-*")):
        d.rename(old / d.name.replace("supernet-", "seed-"))
    record = json.loads((old / "allocation.json").read_text())
    back = {new: was for was, new in RENAMED_KEYS.items()}
    assert {"supernet_width", "supernet_epochs", "supernet_rows"} <= set(record)
    (old / "allocation.json").write_text(json.dumps({back.get(k, k): v for k, v in record.items()}))
    before = [p.stat().st_mtime_ns for p in sorted(old.glob("seed-*/last.pt"))]
    assert len(before) == 2
    out = tmp_path / "old.json"
    assert main(["allocate", "--data", str(folder), "--out", str(out), "--repeats", "2", *ALLOCATE, "--resume"]) == 0
    assert [p.stat().st_mtime_ns for p in sorted(old.glob("seed-*/last.pt"))] == before
    assert not list(old.glob("supernet-*"))
    assert Structure.load(out).rows == Structure.load(straight).rows
    assert [r["scores"] for r in _sidecar(out)["runs"]] == [r["scores"] for r in _sidecar(straight)["runs"]]


def test_run_folder_names_follow_the_format_that_started_the_folder(tmp_path, folder, capsys):
    from scalenet.allocation import supernet_run_dirs

    assert [d.name for d in supernet_run_dirs(tmp_path, 2)] == ["supernet-0000", "supernet-0001"]
    (tmp_path / "seed-0001").mkdir()  # format 1, killed before its first run's folder existed
    assert [d.name for d in supernet_run_dirs(tmp_path, 2)] == ["seed-0000", "seed-0001"]
    (tmp_path / "supernet-0000").mkdir()
    assert supernet_run_dirs(tmp_path, 1)[0].name == "supernet-0000"
    # a file where a run's folder goes is refused before any training, naming the option that moves the runs
    out = tmp_path / "f.json"
    out.with_name("f.runs").mkdir()
    out.with_name("f.runs").joinpath("supernet-0001").write_text("")
    refused(capsys, ["allocate", "--data", folder, "--out", out, "--repeats", "2", *ALLOCATE],
            "supernet-0001 is a file; the supernet runs there need a folder of that name (choose another --out)")
    assert not list(out.with_name("f.runs").glob("supernet-0000"))


def test_the_sidecar_of_format_2_names_the_supernet_and_the_budget_as_its_setting(straight):
    sidecar = _sidecar(straight)
    assert sidecar["version"] == 2 and "seed" not in sidecar
    assert Structure.from_json(sidecar["supernet"]).name == "supernet"
    settings = sidecar["settings"]
    assert {"supernet_width", "supernet_epochs", "width_mult", "macs", "latency_ms"} <= set(settings)
    assert not {"seed_width", "seed_epochs", "macs_target"} & set(settings)
    assert settings["seed"] == 3  # the random seed keeps its name
    meta = Structure.load(straight).meta
    assert "supernet_val_top1" in meta and meta["allocation"] == settings


def test_resuming_with_other_settings_or_a_truncated_checkpoint(folder, tmp_path, capsys):
    out = tmp_path / "r.json"
    base = ["allocate", "--data", str(folder), "--out", str(out), "--repeats", "1", *ALLOCATE]
    assert main(base) == 0
    refused(capsys, [*base, "--force", "--resume", "auto", "--lr", "0.05"],
            "r.runs holds supernet runs of other settings: lr (0.1 there, 0.05 here)")
    refused(capsys, [*base[:-len(ALLOCATE)], "--layers", "1,1", "--width", "4", *ALLOCATE[4:], "--force", "--resume",
                     "auto"], "holds supernet runs of other settings")
    last = out.with_name("r.runs") / "supernet-0000" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])  # cut off mid-write: training falls back to best.pt
    assert main([*base, "--force", "--resume", "auto"]) == 0
    assert "cut off or damaged" in capsys.readouterr().out


@pytest.mark.numerics
def test_torchrun_trains_each_supernet_with_ddp_and_rank_0_writes(folder, tmp_path):
    def run(out: Path, restarts: int = 0, kill: bool = False) -> str:
        step = out.with_name(out.stem + ".runs") / "supernet-0001"  # SIGKILL a worker during the second supernet
        return torchrun(["allocate", "--data", folder, "--out", out, "--repeats", "2", *ALLOCATE, "--resume", "auto",
                         "--save-every", "1e-6"], restarts=restarts,
                        kill_when=(lambda: bool(list(step.glob("step-*.pt")))) if kill else None)

    straight = tmp_path / "straight.json"
    log = run(straight)
    assert log.count("agreement of 2 supernet(s)") == 1  # rank 0 prints the table, the other rank nothing
    killed = tmp_path / "killed.json"
    log = run(killed, restarts=1, kill=True)
    assert "resuming" in log
    assert Structure.load(killed).rows == Structure.load(straight).rows
    assert [r["scores"] for r in _sidecar(killed)["runs"]] == [r["scores"] for r in _sidecar(straight)["runs"]]


def test_jobs_above_the_number_of_gpus_is_refused_before_any_training(folder, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    refused(capsys, ["allocate", "--data", folder, "--out", tmp_path / "g.json", "--jobs", "2", *ALLOCATE],
            "--jobs 2: this machine has 1 GPU(s) (CUDA_VISIBLE_DEVICES 0) and each training takes one")
    assert not (tmp_path / "g.runs").exists()
    refused(capsys, ["study", "--data", folder, "--out", tmp_path / "study", "--jobs", "2", "--layers", "1,1",
                     "--width", "8"], "--jobs 2: this machine has 1 GPU(s)")
    assert not (tmp_path / "study").exists()
