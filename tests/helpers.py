"""Small synthetic data for tests: image folders written to a temp directory."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from scalenet import Structure


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs ``python -m scalenet ARGS`` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "scalenet", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def make_image_folder(root: Path, classes: int = 3, per_class: int = 10, size: int = 16, layout: str = "flat",
                      seed: int = 0) -> Path:
    """Noise images whose mean colour depends on the class, so a network can learn them."""
    rng = np.random.default_rng(seed)
    splits = {"flat": [root], "train_val": [root / "train", root / "val"]}[layout]
    for split in splits:
        for c in range(classes):
            d = split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = np.zeros(3)
                base[c % 3] = 160
                pixels = np.clip(rng.normal(base + 40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.png")
    return root


def tiny_structure(image_size: int = 16, name: str = "tiny") -> Structure:
    return Structure.from_channels(
        [[4, 2, 1, 1], [3, 2, 2, 0]], layers=(1, 1), stem="small", width=4, image_size=image_size, name=name
    )


#: Category ids are deliberately not contiguous (COCO's are not either).
SHAPE_CATEGORIES = [{"id": 1, "name": "red square"}, {"id": 3, "name": "green disc"}, {"id": 5, "name": "blue bar"}]


def make_coco(root: Path, images: int = 20, seed: int = 0) -> tuple[Path, Path]:
    """A tiny COCO-format set: coloured shapes on noise, 128-160 px. Returns (json, image dir)."""
    rng = np.random.default_rng(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    colours = {1: (230, 40, 40), 3: (40, 220, 40), 5: (50, 60, 240)}
    coco = {"images": [], "annotations": [], "categories": SHAPE_CATEGORIES}
    for i in range(images):
        h, w = int(rng.integers(128, 161)), int(rng.integers(128, 161))
        pixels = rng.normal(110, 30, (h, w, 3))
        yy, xx = np.mgrid[0:h, 0:w]
        for _ in range(int(rng.integers(1, 4))):
            cat = int(rng.choice([1, 3, 5]))
            bw, bh = int(rng.integers(24, 64)), int(rng.integers(24, 64))
            if cat == 5:
                bh = max(12, bw // 3)  # wide bars
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            if cat == 3:
                r = min(bw, bh) / 2
                bw = bh = int(2 * r)
                mask = (xx - x0 - r) ** 2 + (yy - y0 - r) ** 2 <= r * r
            else:
                mask = (xx >= x0) & (xx < x0 + bw) & (yy >= y0) & (yy < y0 + bh)
            pixels[mask] = colours[cat]
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": cat,
                                        "bbox": [x0, y0, bw, bh], "area": bw * bh, "iscrowd": 0})
        name = f"{i:03d}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(image_dir / name)
        coco["images"].append({"id": i + 1, "file_name": name, "width": w, "height": h})
    path = root / "instances.json"
    path.write_text(json.dumps(coco))
    return path, image_dir


def detection_structure(name: str = "tiny-det") -> Structure:
    """A 4-stage ImageNet-stem structure small enough for CPU tests at 128 px (no x7 branch in
    stage 4, whose map is 4 px there)."""
    return Structure.from_channels(
        [[6, 4, 3, 3], [8, 4, 2, 2], [8, 8, 4, 4], [16, 8, 8, 0]], layers=(1, 1, 1, 1), stem="imagenet", width=8,
        image_size=128, name=name,
    )


def refused(capsys, argv, message: str) -> None:
    """Runs the command in this process: it must exit with 2 (returned, or the parser's exit) and
    print one line, ``scalenet: error: ...``, containing ``message``."""
    from scalenet.cli import main

    try:
        got = main([str(a) for a in argv])
    except SystemExit as e:
        got = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert got == 2 and len(err) == 1 and err[0].startswith("scalenet: error: ") and message in err[0], err


#: two processes on this machine (gloo on CPU)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def torchrun_workers(agent: int) -> dict[int, int]:
    """{local rank: pid} of the agent's worker processes."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if ppid != agent:
                continue
            env = dict(kv.split("=", 1) for kv in (entry / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, ValueError):
            continue
        if "LOCAL_RANK" in env:
            found[int(env["LOCAL_RANK"])] = int(entry.name)
    return found


def torchrun(args, *, restarts: int = 0, kill_when=None, timeout: int = 600) -> str:
    """Runs ``torchrun --nproc_per_node=2 --max-restarts=R -m scalenet ARGS`` and returns its log
    (it must exit 0). ``kill_when``: SIGKILL local rank 1 as soon as ``kill_when()`` is true."""
    import os
    import signal
    import time

    agent = subprocess.Popen([*TORCHRUN, f"--max-restarts={restarts}", "-m", "scalenet", *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if kill_when is not None:
        deadline = time.time() + 240
        while not kill_when() and time.time() < deadline and agent.poll() is None:
            time.sleep(0.005)
        workers = torchrun_workers(agent.pid)
        assert agent.poll() is None and 1 in workers, "the run ended before a worker could be stopped"
        os.kill(workers[1], signal.SIGKILL)
    log, _ = agent.communicate(timeout=timeout)
    assert agent.returncode == 0, log[-3000:]
    return log

