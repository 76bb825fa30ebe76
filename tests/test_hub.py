"""Sharing a model in the Hugging Face Hub layout: export, then timm (and our commands) load it."""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import scalenet
from scalenet import Structure
from scalenet.checkpoint import read_state_dict, save_weights
from scalenet.cli import main
from scalenet.compat import timm_reads_local_dir
from scalenet.training import model_from_checkpoint

from helpers import make_image_folder, refused


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A learned structure from a tiny allocate run, trained one epoch: its data and best.pt."""
    root = tmp_path_factory.mktemp("learned")
    folder = make_image_folder(root / "data", classes=3, per_class=12, size=32)
    out = root / "tiny.json"
    assert main(["allocate", "--data", str(folder), "--out", str(out), "--epochs", "1", "--batch-size", "8",
                 "--layers", "1,1", "--width", "8", "--repeats", "1", "--then-train", "2", "--no-progress"]) == 0
    return folder, root / "tiny_run" / "best.pt"


def timm_from_folder(hub, pretrained=True, **kwargs):
    """timm's own reading of a Hub-layout folder: ``local-dir:`` from timm 1.0.16; before it, what
    a user of the older timm does: the config's architecture and model_args, the weights as a file."""
    if timm_reads_local_dir():
        return timm.create_model(f"local-dir:{hub}", pretrained=pretrained, **kwargs)
    config = json.loads((hub / "config.json").read_text())
    return timm.create_model(config["architecture"], pretrained=pretrained, num_classes=config["num_classes"],
                             pretrained_cfg_overlay=dict(file=str(hub / "model.safetensors"),
                                                         num_classes=config["num_classes"]),
                             **config.get("model_args", {}), **kwargs)


def test_a_learned_structure_round_trips_through_timm_with_identical_logits(learned, tmp_path, capsys):
    folder, best = learned
    hub = tmp_path / "hub"
    assert main(["export", "--checkpoint", str(best), "--hub", str(hub)]) == 0
    assert sorted(p.name for p in hub.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((hub / "config.json").read_text())
    original, ckpt = model_from_checkpoint(best)
    assert config["architecture"] == "scalenet_structure" and config["num_classes"] == 3
    assert config["label_names"] == ckpt["classes"]
    assert Structure.from_json(config["model_args"]["structure"]).rows == original.structure.rows
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["pretrained_cfg"]["mean"] == ckpt["mean"]

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = original.eval()(x)
        for model in (timm_from_folder(hub), scalenet.create_model(f"local-dir:{hub}")):
            assert torch.equal(model.eval()(x), expected)  # the same weights and arithmetic, on this machine
    features = timm_from_folder(hub, features_only=True).eval()
    ours = scalenet.create_model(f"local-dir:{hub}", features_only=True).eval()
    with torch.no_grad():
        maps, again = features(x), ours(x)
    assert len(maps) == len(original.structure.layers) + 1 and all(torch.equal(a, b) for a, b in zip(maps, again))
    # random weights would not match: the test can fail
    assert not torch.equal(timm_from_folder(hub, pretrained=False).eval()(x), expected)


def test_the_model_card_states_the_checkpoints_own_figures(learned, tmp_path):
    _, best = learned
    hub = tmp_path / "hub"
    assert main(["export", "--checkpoint", str(best), "--hub", str(hub), "--license", "mit"]) == 0
    card = (hub / "README.md").read_text()
    ckpt = read_state_dict(best)
    structure = Structure.from_json(ckpt["structure"])
    front = card.split("---")[1]
    assert "library_name: timm" in front and "license: mit" in front and "- scalenet" in front
    assert f"| validation top-1 | {100 * ckpt['val_top1']:.2f}% (best.pt, epoch {ckpt['epoch']}" in card
    assert f"| MACs | {structure.macs(32, 3, 3):,} at 32 px |" in card
    assert f"| parameters | {structure.params(3, 3):,} |" in card
    assert f"({ckpt['train_images']:,} training images)" in card and ckpt["data"] in card


def test_predict_eval_and_init_read_the_hub_folder(learned, tmp_path, capsys):
    folder, best = learned
    hub = tmp_path / "hub"
    assert main(["export", "--checkpoint", str(best), "--hub", str(hub)]) == 0
    image = sorted(sorted(p for p in folder.iterdir() if p.is_dir())[0].iterdir())[0]
    capsys.readouterr()
    assert main(["predict", str(image), "--checkpoint", f"local-dir:{hub}", "--json", "--no-progress"]) == 0
    classes = json.loads((hub / "config.json").read_text())["label_names"]
    top = json.loads(capsys.readouterr().out.splitlines()[0])["top"]
    assert {t["class"] for t in top} == set(classes)  # the names come from the config
    assert main(["predict", str(image), "--checkpoint", str(best), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["top"] == top
    assert main(["eval", "--checkpoint", f"local-dir:{hub}", "--data", str(folder), "--json"]) == 0
    via_hub = json.loads(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", str(best), "--data", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == via_hub
    structure = tmp_path / "s.json"
    Structure.from_json(json.loads((hub / "config.json").read_text())["model_args"]["structure"]).save(structure)
    assert main(["train", "--model", str(structure), "--data", str(folder), "--epochs", "1", "--batch-size", "8",
                 "--init", f"local-dir:{hub}", "--out", str(tmp_path / "tuned"), "--no-progress"]) == 0


def test_a_published_model_with_its_weight_file_round_trips(tmp_path):
    weights = save_weights(scalenet.create_model("scalenet50_light"), tmp_path / "w.safetensors")
    hub = tmp_path / "hub"
    assert main(["export", "--model", "scalenet50_light", "--checkpoint", str(weights), "--hub", str(hub)]) == 0
    assert json.loads((hub / "config.json").read_text())["architecture"] == "scalenet50_light"
    original = scalenet.create_model("scalenet50_light", checkpoint=weights).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(timm_from_folder(hub).eval()(x), original(x))
    assert "figures of the original release, not measured by this library" in (hub / "README.md").read_text()


def test_a_registered_builder_takes_a_structure_as_model_args():
    s = Structure.from_channels([[4, 2, 2, 0], [8, 4, 4, 0]], (1, 1), stem="small", width=8, image_size=32)
    model = timm.create_model("scalenet_structure", structure=s.to_json(), num_classes=4,
                              pretrained_cfg_overlay=dict(mean=(0.5, 0.5, 0.5)))
    assert model.structure.rows == s.rows and model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    maps = timm.create_model("scalenet_structure", structure=s.to_json(), features_only=True)(torch.randn(1, 3, 32, 32))
    assert [m.shape[1] for m in maps] == [8, 32, 64]
    # without structure= (as timm's generic tests build every registered name): ScaleNet-50's allocation
    default = timm.create_model("scalenet_structure", device="meta")
    assert default.structure.rows == Structure.published("scalenet50").rows


# ---------------------------------------------------------------------------- bad input
def test_bad_hub_folders_and_outputs_get_one_line(learned, tmp_path, capsys):
    _, best = learned
    hub = tmp_path / "hub"
    assert main(["export", "--checkpoint", str(best), "--hub", str(hub)]) == 0
    before = (hub / "model.safetensors").read_bytes()
    refused(capsys, ["export", "--checkpoint", best, "--hub", hub], f"--hub {hub} exists; choose another folder or pass --force")
    assert (hub / "model.safetensors").read_bytes() == before
    assert main(["export", "--checkpoint", str(best), "--hub", str(hub), "--force"]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hub.")]  # no temporary folder left
    refused(capsys, ["export", "--checkpoint", best, "--hub", tmp_path / "x", "--model", "scalenet50"],
            "--model does not apply with --checkpoint")
    image = tmp_path / "i.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(capsys, ["predict", image, "--checkpoint", f"local-dir:{empty}"], f"local-dir:{empty}: no config.json in {empty}")
    refused(capsys, ["predict", image, "--checkpoint", f"local-dir:{tmp_path / 'none'}"], "no such folder")
    config = json.loads((hub / "config.json").read_text())
    config["model_args"]["structure"]["rows"][0][0] = -3
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(config))
    refused(capsys, ["predict", image, "--checkpoint", f"local-dir:{bad}"], f"{bad / 'config.json'} (model_args.structure)")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text((hub / "config.json").read_text())
    weights = load_file(hub / "model.safetensors")
    weights["fc.weight"] = torch.zeros(5, weights["fc.weight"].shape[1])
    save_file(weights, other / "model.safetensors")
    refused(capsys, ["predict", image, "--checkpoint", f"local-dir:{other}"], "1 shape mismatches, checkpoint vs model (fc.weight")
    refused(capsys, ["predict", image, "--checkpoint", "hf-hub:nobody/nothing"],
            "hf-hub:nobody/nothing: the Hugging Face Hub cannot be reached from here")
    refused(capsys, ["predict", image, "--checkpoint", "hf-hub:nobody/nothing"], "use local-dir:PATH")


def test_a_training_checkpoint_still_exports_to_onnx_with_its_structure(learned, tmp_path):
    _, best = learned
    structure = best.parent.parent / "tiny.json"  # the structure allocate wrote beside its run
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(structure), "--checkpoint", str(best), "--num-classes", "3", "--image-size",
                 "32", "--onnx", str(out)]) == 0
    assert out.stat().st_size > 0
