"""scalenet predict: top-k class names from a training checkpoint, and its bad inputs."""

import json

import pytest
import torch

from scalenet.cli import main
from scalenet.data import build_data
from scalenet.training import TrainConfig, train
from scalenet.predict import load_predictor

from helpers import make_image_folder, tiny_structure


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    folder = make_image_folder(root / "data", classes=3, per_class=12, size=16)
    train(tiny_structure(), build_data(folder), TrainConfig(epochs=6, batch_size=8, lr=0.05, progress=False,
                                                             tensorboard=False), root / "run")
    return root, folder


def test_table_and_json_lines_name_the_classes_with_probabilities(trained, capsys):
    root, folder = trained
    ckpt = root / "run" / "best.pt"
    images = sorted((folder / "class_1").iterdir())[:3]
    assert main(["predict", "--checkpoint", str(ckpt), *map(str, images), "--topk", "2", "--no-progress"]) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["image", "top-1", "prob", "top-2", "prob"]
    assert len(rows) == 3
    for row, p in zip(rows, images):
        path, c1, p1, c2, p2 = row.split()
        assert path == str(p) and c1.startswith("class_") and c2.startswith("class_") and c1 != c2
        assert float(p1.rstrip("%")) >= float(p2.rstrip("%"))
    assert main(["predict", "--checkpoint", str(ckpt), str(folder / "class_2"), "--json", "--no-progress"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(records) == 12 and all(len(r["top"]) == 3 for r in records)  # topk capped at the 3 classes
    for r in records:
        probs = [t["prob"] for t in r["top"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert sum(r["top"][0]["class"] == "class_2" for r in records) >= 10  # the net learned the colours


def test_predictions_use_the_eval_preprocessing_of_training(trained):
    root, folder = trained
    predictor = load_predictor(root / "run" / "best.pt")
    data = build_data(folder)
    path, label = data.val.samples[0]
    x, _ = data.val[0]
    assert torch.equal(predictor.read(path), x)
    (top,) = predictor(x[None], topk=1)
    with torch.no_grad():
        assert top[0]["index"] == int(predictor.model(x[None]).argmax())


def test_unreadable_files_in_a_folder_are_skipped_and_counted(trained, tmp_path, capsys):
    root, folder = trained
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, p in enumerate(sorted((folder / "class_0").iterdir())[:2]):
        (mixed / f"{i}.png").write_bytes(p.read_bytes())
    (mixed / "broken.png").write_bytes(b"not an image")
    (mixed / "notes.txt").write_text("ignored: not an image extension")
    assert main(["predict", "--checkpoint", str(root / "run" / "best.pt"), str(mixed), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert len(out.out.strip().splitlines()) == 1 + 2  # header and the two readable images
    assert "skipped 1 unreadable or non-image file(s)" in out.err and "broken.png" in out.err


def test_bad_inputs_are_one_line(trained, tmp_path, capsys):
    root, folder = trained
    ckpt = str(root / "run" / "best.pt")
    image = str(next((folder / "class_0").iterdir()))
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG truncated")
    nameless = tmp_path / "nameless.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["classes"]
    torch.save(state, nameless)
    cases = [
        (["--checkpoint", str(tmp_path / "missing.pt"), image], "checkpoint not found"),
        (["--checkpoint", ckpt, str(tmp_path / "broken.png")], "none of the 1 file(s) is a readable image"),
        (["--checkpoint", ckpt, str(tmp_path / "empty")], "has no images"),
        (["--checkpoint", ckpt, str(tmp_path / "nope.png")], "image or folder not found"),
        (["--checkpoint", str(nameless), image], "holds no class names"),
    ]
    for args, message in cases:
        assert main(["predict", *args, "--no-progress"]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("scalenet: error: ") and message in err[0], (args, err)
