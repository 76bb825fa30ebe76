"""Fault tolerance end to end: a 2-process torchrun run (CPU, gloo) with --max-restarts 1 and
--resume auto loses a worker mid-epoch, to SIGKILL or to SIGTERM. torchrun's agent restarts
both workers, the run reloads its newest checkpoint and ends with the weights of a run that
was never interrupted."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from scalenet.checkpoint import read_state_dict

from helpers import TORCHRUN, make_image_folder, tiny_structure, torchrun_workers as _workers

#: .ci/run runs these a second time under another CPU kernel set
pytestmark = pytest.mark.numerics

@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic")
    folder = make_image_folder(root / "data", classes=3, per_class=24, size=16)
    structure = tiny_structure().save(root / "tiny.json")
    return root, folder, structure


def _command(setting, out: Path, restarts: int) -> list[str]:
    _, folder, structure = setting
    return [*TORCHRUN, f"--max-restarts={restarts}", "-m", "scalenet", "train", "--model", str(structure),
            "--data", str(folder), "--out", str(out), "--epochs", "3", "--batch-size", "2", "--seed", "1",
            "--no-progress", "--resume", "auto", "--save-every", "1e-6"]  # a step checkpoint after every step


@pytest.fixture(scope="module")
def straight(setting):
    out = setting[0] / "straight"
    r = subprocess.run(_command(setting, out, restarts=0), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return read_state_dict(out / "last.pt")


@pytest.mark.parametrize("sig, rank", [(signal.SIGKILL, 0), (signal.SIGTERM, 1)], ids=["SIGKILL-rank0", "SIGTERM-rank1"])
def test_torchrun_restarts_a_lost_worker_and_the_run_ends_as_if_uninterrupted(setting, straight, sig, rank):
    out = setting[0] / f"run-{sig.name}"
    agent = subprocess.Popen(_command(setting, out, restarts=1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.time() + 120
    while not (out / "step-e0001-s0000003.pt").exists() and time.time() < deadline and agent.poll() is None:
        time.sleep(0.005)
    workers = _workers(agent.pid)
    assert agent.poll() is None and rank in workers, "the run ended before a worker could be stopped"
    os.kill(workers[rank], sig)
    log, _ = agent.communicate(timeout=300)
    assert agent.returncode == 0, log[-3000:]
    assert log.count("resuming ") == 1, log[-3000:]  # the agent restarted the workers once, and they resumed
    if sig == signal.SIGTERM:
        assert "stopped by SIGTERM after finishing its step" in log
    final = read_state_dict(out / "last.pt")
    assert final["epoch"] == 3
    for k, v in straight["model"].items():
        assert torch.equal(v, final["model"][k]), k
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert len(list(out.glob("step-*.pt"))) <= 2
