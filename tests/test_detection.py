"""Faster R-CNN + FPN with a ScaleNet backbone, on a tiny synthetic COCO-format set."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from scalenet import create_model
from scalenet.checkpoint import CheckpointError, read_state_dict, save_weights
from scalenet.cli import main
from scalenet.detection import (
    CocoDetection,
    DetectConfig,
    coco_evaluate,
    detection_loader,
    detector_from_checkpoint,
    fasterrcnn_scalenet_fpn,
    format_coco_table,
    scalenet_fpn_backbone,
    train_detector,
)

from helpers import detection_structure, free_port, make_coco


# fewer proposals than the COCO defaults: the same code paths, a fraction of the CPU time
FAST_HEADS = dict(rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=300,
                  rpn_post_nms_top_n_test=100, box_batch_size_per_image=64)
SMALL = dict(min_size=128, max_size=160, fpn_channels=64)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("coco"), images=20)


@pytest.fixture(scope="module")
def structure_file(tmp_path_factory):
    return detection_structure().save(tmp_path_factory.mktemp("structure") / "det.json")


def _detector(**kw):
    torch.manual_seed(0)
    return fasterrcnn_scalenet_fpn(detection_structure(), 6, **SMALL, **FAST_HEADS, **kw)


# ---------------------------------------------------------------------------- model
def test_fpn_over_stages_1_to_4_with_feature_info_channels():
    model = _detector()
    body = model.backbone.body
    classifier = create_model(detection_structure(), num_classes=0)
    stages = [f for f in classifier.feature_info if f["module"].startswith("layer")]
    assert [m.in_channels for m in model.backbone.fpn.inner_blocks.modules() if isinstance(m, nn.Conv2d)] == [
        f["num_chs"] for f in stages
    ]
    assert model.backbone.out_channels == 64
    model.eval()
    with torch.no_grad():
        feats = body(torch.randn(1, 3, 128, 160))
    assert list(feats) == ["0", "1", "2", "3"]
    assert [(128 // f.shape[-2], 160 // f.shape[-1]) for f in feats.values()] == [(4, 4), (8, 8), (16, 16), (32, 32)]
    assert [f.shape[1] for f in feats.values()] == [f["num_chs"] for f in stages]


def test_published_structure_as_backbone():
    model = fasterrcnn_scalenet_fpn("scalenet50", 91, min_size=600, max_size=1000)
    convs = [m for m in model.backbone.fpn.inner_blocks.modules() if isinstance(m, nn.Conv2d)]
    assert [c.in_channels for c in convs] == [256, 512, 1024, 2048]
    assert model.roi_heads.box_predictor.cls_score.out_features == 91
    assert (model.transform.min_size, model.transform.max_size) == ((600,), 1000)


def test_bn_frozen_by_default_and_trainable_layers_from_the_top():
    model = _detector()
    body = model.backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in body.modules()) > 0
    trained = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    assert trained == {"layer2", "layer3", "layer4"}
    all_layers = _detector(trainable_layers=5)
    assert {n.split(".")[0] for n, p in all_layers.backbone.body.named_parameters() if p.requires_grad} == {
        "conv1", "layer1", "layer2", "layer3", "layer4"}
    none = _detector(trainable_layers=0)
    assert not any(p.requires_grad for p in none.backbone.body.parameters())
    bn = _detector(norm="bn")
    assert any(isinstance(m, nn.BatchNorm2d) and m.weight.requires_grad for m in bn.backbone.body.layer4.modules())
    with pytest.raises(ValueError, match="norm must be one of"):
        _detector(norm="group")


@pytest.mark.numerics
def test_frozen_backbone_computes_what_the_eval_mode_model_computed(tmp_path):
    torch.manual_seed(0)
    model = create_model(detection_structure(), num_classes=0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    path = save_weights(model, tmp_path / "w.safetensors")
    fpn = scalenet_fpn_backbone(detection_structure(), backbone_checkpoint=path, norm="frozen").train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fpn.body.modules())  # the SA blocks' ModuleDicts too
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        expected = model.eval().forward_features(x)
        got = fpn.body(x)["3"]  # the train-mode body: frozen BN ignores the mode
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_backbone_weights_from_our_checkpoints_and_release_layout(tmp_path):
    torch.manual_seed(1)
    classifier = create_model(detection_structure(), num_classes=1000)
    plain = save_weights(classifier, tmp_path / "cls.safetensors")
    release = tmp_path / "release.pth"  # the release's files: a DataParallel state_dict in a wrapper
    torch.save({"state_dict": {f"module.{k}": v for k, v in classifier.state_dict().items()}}, release)
    expected = classifier.layer3[0].conv2["0"].weight
    for path in (plain, release):
        model = fasterrcnn_scalenet_fpn(detection_structure(), 6, backbone_checkpoint=path, **SMALL)
        assert torch.equal(model.backbone.body.layer3[0].conv2["0"].weight, expected)
        frozen = model.backbone.body.layer3[0].bn2["0"]
        assert torch.equal(frozen.running_var, classifier.layer3[0].bn2["0"].running_var)
    other = create_model("scalenet50_light", num_classes=0)
    save_weights(other, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        fasterrcnn_scalenet_fpn(detection_structure(), 6, backbone_checkpoint=tmp_path / "other.safetensors", **SMALL)


def test_160_px_images_run_and_a_size_with_no_pixels_left_is_one_clear_error():
    model = fasterrcnn_scalenet_fpn("scalenet50_light", 6, min_size=160, max_size=160, **FAST_HEADS).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 160, 160), torch.rand(3, 120, 160)])
    assert len(out) == 2 and {"boxes", "labels", "scores"} <= set(out[0])
    with pytest.raises(ValueError, match="image size 16 is too small for 4 stages"):
        fasterrcnn_scalenet_fpn(detection_structure(), 6, min_size=16, max_size=32)


def test_dataset_targets_flip_and_collate(coco):
    path, images = coco
    ds = CocoDetection(path, images)
    raw = json.loads(path.read_text())
    assert len(ds) == 20 and ds.num_classes == 6 and not ds.skipped
    image, target = ds[0]
    first = [a for a in raw["annotations"] if a["image_id"] == 1]
    x, y, w, h = first[0]["bbox"]
    assert target["boxes"][0].tolist() == [x, y, x + w, y + h]
    assert target["labels"].tolist() == [a["category_id"] for a in first]
    assert image.shape == (3, raw["images"][0]["height"], raw["images"][0]["width"]) and image.max() <= 1
    flipped = CocoDetection(path, images, train=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        im, t = flipped[0]
        seen.add(torch.equal(im, image))
        if not torch.equal(im, image):
            assert torch.equal(im, image.flip(-1))
            width = image.shape[-1]
            assert t["boxes"][0].tolist() == [width - (x + w), y, width - x, y + h]
    assert seen == {True, False}
    batch = next(iter(detection_loader(ds, 3, shuffle=False)))
    assert len(batch[0]) == 3 and len(batch[1]) == 3 and batch[2] == 0


def _write(tmp_path, coco_dict, name="bad.json"):
    p = tmp_path / name
    p.write_text(json.dumps(coco_dict))
    return p


def test_bad_annotations_are_skipped_and_counted(coco, tmp_path):
    path, images = coco
    raw = json.loads(path.read_text())
    n = len(raw["annotations"])
    raw["annotations"] += [
        {"id": 1001, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 5]},
        {"id": 1002, "image_id": 2, "category_id": 3, "bbox": [10, 10, 5, -2]},
        {"id": 1003, "image_id": 2, "category_id": 42, "bbox": [10, 10, 5, 5]},
        {"id": 1004, "image_id": 3, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 1},
    ]
    ds = CocoDetection(_write(tmp_path, raw), images)
    assert ds.skipped.counts == {"boxes with non-positive size": 2, "annotations of unknown categories": 1}
    assert "2 boxes with non-positive size" in ds.skipped.describe()
    assert len(ds.valid_annotations) == n + 1  # the crowd region is kept for evaluation ...
    assert ds[2][1]["boxes"].shape[0] == sum(a["image_id"] == 3 for a in raw["annotations"][:n])  # ... not trained on


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "annotation file not found"),
        ("{not json", r"is not valid JSON \(line 1"),
        ("[1, 2]", "not a COCO annotation file"),
        ('{"images": [], "annotations": [], "categories": [{"id": 1}]}', "lists no images"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1}]}', "needs an 'id' and a 'file_name'"),
        ('{"images": [{"id": 1, "file_name": "x.png"}], "annotations": []}', "no 'categories' list"),
    ],
)
def test_invalid_annotation_files(tmp_path, coco, content, message):
    path = tmp_path / "a.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        CocoDetection(path, coco[1])


def test_images_referenced_but_absent(coco, tmp_path):
    path, images = coco
    raw = json.loads(path.read_text())
    raw["images"][3]["file_name"] = "gone.png"
    with pytest.raises(FileNotFoundError, match=r"1 of 20 images listed in bad.json are not in .*gone.png"):
        CocoDetection(_write(tmp_path, raw), images)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        CocoDetection(path, tmp_path / "nowhere")


# ---------------------------------------------------------------------------- evaluation
def test_coco_metrics_against_known_answers(coco):
    path, images = coco
    ds = CocoDetection(path, images)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in ds.valid_annotations]
    stats = coco_evaluate(ds.coco, ds.valid_annotations, perfect)
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    # the right boxes with the wrong class find nothing
    wrong = [dict(r, category_id={1: 3, 3: 5, 5: 1}[r["category_id"]]) for r in perfect]
    assert coco_evaluate(ds.coco, ds.valid_annotations, wrong)["AP"] < 0.01  # (shapes may overlap)
    # boxes shifted by a third of their size: IoU 0.5 passes, IoU 0.75 fails
    shifted = [dict(r, bbox=[r["bbox"][0] + r["bbox"][2] / 6, r["bbox"][1], r["bbox"][2], r["bbox"][3]]) for r in perfect]
    s = coco_evaluate(ds.coco, ds.valid_annotations, shifted)
    assert s["AP50"] == pytest.approx(1.0) and s["AP75"] == pytest.approx(0.0)
    table = format_coco_table(stats)
    assert table.splitlines()[0] == " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000"
    assert len(table.splitlines()) == 12


# ---------------------------------------------------------------------------- training
def test_a_few_iterations_reduce_the_loss(coco):
    path, images = coco
    ds = CocoDetection(path, images, train=False)
    model = _detector().train()
    images_, targets, _ = next(iter(detection_loader(ds, 4, shuffle=False)))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
    losses = []
    for _ in range(12):
        loss = sum(model(images_, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses


@pytest.mark.numerics
def test_trained_then_reloaded_predicts_the_same_boxes(coco, tmp_path):
    path, images = coco
    ds = CocoDetection(path, images, train=True)
    cfg = DetectConfig(backbone=str(detection_structure().save(tmp_path / "s.json")), epochs=1, batch_size=4, lr=0.005,
                       min_size=128, max_size=160, fpn_channels=64, progress=False, model_kwargs=FAST_HEADS)
    model, metrics = train_detector(ds, cfg, tmp_path / "run")
    assert metrics[0]["epoch"] == 1 and (tmp_path / "run" / "last.pt").is_file()
    reloaded, ckpt = detector_from_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["categories"] == {"1": "red square", "3": "green disc", "5": "blue bar"}
    test_images = [CocoDetection(path, images)[i][0] for i in range(3)]
    for m in (model, reloaded):
        m.eval().roi_heads.score_thresh = 0.0
    with torch.no_grad():
        a, b = model(test_images), reloaded(test_images)
    assert sum(len(o["boxes"]) for o in a) > 0
    for x, y in zip(a, b):
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["labels"], y["labels"])
        assert torch.equal(x["scores"], y["scores"])


def test_not_a_detection_checkpoint(tmp_path):
    torch.save({"model": {}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a scalenet detection checkpoint"):
        detector_from_checkpoint(tmp_path / "x.pt")


# ---------------------------------------------------------------------------- CLI
def run_cli(capsys, *args):
    """``scalenet ARGS`` in this process (the import alone takes seconds); returns (code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _train_args(coco, structure_file, out, *extra):
    path, images = coco
    return ("detect-train", "--coco-json", path, "--images", images, "--out", out, "--backbone", structure_file,
            "--min-size", "128", "--max-size", "160", "--fpn-channels", "64", "--batch-size", "4", "--lr", "0.005",
            "--no-progress", *extra)


def test_cli_train_resume_and_eval_table(coco, structure_file, tmp_path, capsys):
    path, images = coco
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, *_train_args(coco, structure_file, run, "--epochs", "1"))
    assert code == 0, err[-2000:]
    code, out, err = run_cli(capsys, *_train_args(coco, structure_file, run, "--epochs", "2"))
    assert code == 2 and "pass --resume" in err
    code, out, err = run_cli(capsys, *_train_args(coco, structure_file, run, "--epochs", "2", "--resume"))
    assert code == 0, err[-2000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [rec["epoch"] for rec in records] == [1, 2]
    straight = tmp_path / "straight"  # the same two epochs without the stop: the same weights
    code, out, err = run_cli(capsys, *_train_args(coco, structure_file, straight, "--epochs", "2"))
    assert code == 0, err[-2000:]
    resumed, uninterrupted = read_state_dict(run / "last.pt")["model"], read_state_dict(straight / "last.pt")["model"]
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    assert set(records[0]) >= {"loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}

    code, out, err = run_cli(capsys, "detect-eval", "--checkpoint", run / "last.pt", "--coco-json", path, "--images", images,
                             "--score-thresh", "0", "--no-progress")
    assert code == 0, err[-2000:]
    lines = out.splitlines()
    assert lines[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = ")
    assert sum("Average Recall" in line for line in lines) == 6
    saved = json.loads((run / "eval-instances.json").read_text())
    assert set(saved) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"} and saved["detections"] > 0
    assert f"{saved['AP']:0.3f}" in lines[0]

    # data whose category ids name other categories: refused for evaluation and for resuming
    renamed = json.loads(path.read_text())
    renamed["categories"] = [dict(c, name="dog") if c["id"] == 3 else c for c in renamed["categories"]]
    other = tmp_path / "renamed.json"
    other.write_text(json.dumps(renamed))
    code, out, err = run_cli(capsys, "detect-eval", "--checkpoint", run / "last.pt", "--coco-json", other, "--images",
                             images, "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert (f"{run / 'last.pt'} was trained on other categories than {other} names: {{3: 'green disc'}} there, "
            f"{{3: 'dog'}} here; evaluate on data with the categories it was trained on") in err
    code, out, err = run_cli(capsys, *_train_args((other, images), structure_file, run, "--epochs", "3", "--resume"))
    assert code == 2 and "different data set" in err and "categories (3: 'green disc' there, 'dog' here)" in err, err


@pytest.mark.numerics
def test_sigterm_mid_epoch_then_resume_auto_ends_as_if_uninterrupted(coco, structure_file, tmp_path, capsys,
                                                                      monkeypatch):
    """Detection runs on the same run layer: SIGTERM inside an epoch saves the position, exits with
    143, and --resume auto continues to the weights of an uninterrupted run."""
    common = ("--epochs", "2", "--batch-size", "2", "--resume", "auto")  # 20 images: 10 steps per epoch
    code, out, err = run_cli(capsys, *_train_args(coco, structure_file, tmp_path / "straight", *common))
    assert code == 0, err[-2000:]
    read = CocoDetection.__getitem__
    calls = []

    def terminated_at_the_7th_image(self, key):
        calls.append(key)
        if len(calls) == 7:  # while the 4th batch of epoch 1 is read
            os.kill(os.getpid(), signal.SIGTERM)
        return read(self, key)

    monkeypatch.setattr(CocoDetection, "__getitem__", terminated_at_the_7th_image)
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, *_train_args(coco, structure_file, run, *common))
    assert code == 143 and "stopped by SIGTERM after finishing its step" in err and "--resume auto" in err, err[-2000:]
    assert [p.name for p in run.glob("step-*.pt")] == ["step-e0001-s0000004.pt"] and not (run / "last.pt").exists()
    monkeypatch.setattr(CocoDetection, "__getitem__", read)
    code, out, err = run_cli(capsys, *_train_args(coco, structure_file, run, *common))
    assert code == 0 and "from step-e0001-s0000004.pt (epoch 1, step 4)" in out, err[-2000:]
    resumed, uninterrupted = (read_state_dict(d / "last.pt")["model"] for d in (run, tmp_path / "straight"))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_cli_bad_input_is_one_line(coco, structure_file, tmp_path, capsys):
    path, images = coco
    cases = [
        (_train_args((tmp_path / "none.json", images), structure_file, tmp_path / "r1", "--epochs", "1"),
         "annotation file not found"),
        (_train_args((path, tmp_path / "noimg"), structure_file, tmp_path / "r2", "--epochs", "1"), "image folder not found"),
        (_train_args(coco, structure_file, tmp_path / "r3", "--min-size", "16"), "image size 16 is too small for 4 stages"),
        (_train_args(coco, structure_file, tmp_path / "r4", "--backbone-checkpoint", tmp_path / "nope.pth"),
         "backbone checkpoint not found"),
        (("detect-eval", "--checkpoint", tmp_path / "missing.pt", "--coco-json", path, "--images", images),
         "checkpoint not found"),
        (("detect-eval", "--checkpoint", path, "--coco-json", path, "--images", images), "not a readable PyTorch checkpoint"),
    ]
    for args, message in cases:
        code, out, err = run_cli(capsys, *args)  # an exception would fail the test: no traceback
        assert code == 2, (args, err[-1000:])
        assert message in err, err[-1000:]
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.numerics
def test_torchrun_train_and_sharded_eval_equal_one_process(coco, structure_file, tmp_path, capsys):
    path, images = coco
    run = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    r = subprocess.run([*torchrun, f"--master_port={free_port()}", "-m", "scalenet",
                        *map(str, _train_args(coco, structure_file, run, "--epochs", "1", "--batch-size", "2"))],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert r.stdout.count("epoch 1/1: loss") == 1  # rank 0 alone reports
    common = ["detect-eval", "--checkpoint", str(run / "last.pt"), "--coco-json", str(path), "--images", str(images),
              "--score-thresh", "0", "--batch-size", "1", "--json"]
    sharded = subprocess.run([*torchrun, f"--master_port={free_port()}", "-m", "scalenet", *common,
                              "--save", str(tmp_path / "sharded.json")], capture_output=True, text=True, timeout=300)
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    code, out, err = run_cli(capsys, *common, "--save", tmp_path / "single.json")
    assert code == 0, err[-2000:]
    a, b = json.loads(sharded.stdout), json.loads(out)
    assert a["detections"] == b["detections"] > 0 and a["images"] == b["images"] == 20
    for k in ("AP", "AP50", "AP75", "AR100"):
        assert a[k] == b[k], k
