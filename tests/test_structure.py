import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import scalenet
from scalenet import Structure
from scalenet.structure import STAGE_DEPTHS, branch_kernel_size

from conftest import PUBLISHED


def counted(model, image_size, in_chans=3):
    """MACs of a real forward pass (FlopCounterMode counts 2 per multiply-add) and parameters."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, in_chans, image_size, image_size))
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_macs_and_params_match_the_release(name):
    macs, params = PUBLISHED[name]
    s = Structure.published(name)
    assert s.macs(224) == macs
    assert s.params(1000) == params


@pytest.mark.parametrize("name", ["scalenet50_light", "scalenet50"])
def test_analytic_counts_agree_with_a_counting_pass(name):
    s = Structure.published(name)
    for image_size, num_classes in [(224, 1000), (256, 10)]:
        model = scalenet.create_model(name, num_classes=num_classes)
        assert counted(model, image_size) == (s.macs(image_size, num_classes), s.params(num_classes))


def test_analytic_counts_agree_on_the_small_stem(tiny):
    for in_chans, num_classes in [(1, 10), (3, 0)]:
        model = scalenet.create_model(tiny, num_classes=num_classes, in_chans=in_chans)
        assert counted(model, 14, in_chans) == (tiny.macs(14, num_classes, in_chans), tiny.params(num_classes, in_chans))


def test_published_layouts():
    for name, depth in [("scalenet50_light", 50), ("scalenet50", 50), ("scalenet101", 101), ("scalenet152", 152)]:
        s = Structure.published(name)
        assert s.layers == STAGE_DEPTHS[depth]
        assert s.depth == depth
        assert [r[-1] for r in s.rows] == [56] * 3 + [28] * s.layers[1] + [14] * s.layers[2] + [7] * 3
        assert s.meta["published"]["top1_err"] > 0


def test_kernel_rule_uses_branch_position_not_scale():
    s = Structure.published("scalenet50_light")
    last = list(s.blocks())[-1]
    assert last.side == 7
    assert last.kernel_sizes == (3, 3, 3, 1)  # x4 at side 7 stays 3x3; x7 is 1x1
    assert branch_kernel_size(14, 3) == 3 and branch_kernel_size(8, 3) == 1 and branch_kernel_size(2, 1) == 1


@pytest.mark.parametrize("bare", [False, True])
def test_json_round_trip(tmp_path, bare):
    s = Structure.published("scalenet101")
    path = s.save(tmp_path / "s.json", bare=bare)
    loaded = Structure.load(path)
    assert loaded == Structure(rows=s.rows, layers=s.layers, name="s" if bare else s.name)
    if not bare:
        assert loaded.meta == s.meta
        assert json.loads(path.read_text())["rows"] == [list(r) for r in s.rows]
    else:
        assert json.loads(path.read_text()) == [list(r) for r in s.rows]


def test_round_trip_keeps_small_stem_metadata(tmp_path, tiny):
    loaded = Structure.load(tiny.save(tmp_path / "tiny.json"))
    assert loaded == tiny
    assert (loaded.stem, loaded.width, loaded.image_size, loaded.layers) == ("small", 4, 14, (2, 2))


def test_bare_list_with_explicit_layers(tmp_path):
    rows = [[8, 4, 0, 0, 56], [8, 0, 4, 0, 28]]
    path = tmp_path / "bare.json"
    path.write_text(json.dumps(rows))
    s = Structure.load(path, layers=[1, 1])
    assert s.layers == (1, 1) and s.stem == "imagenet" and s.image_size == 224
    assert s.name == "bare"


def test_uniform_zeroes_scales_that_do_not_fit():
    s = Structure.uniform((1, 1, 1), 8, stem="small", width=8, image_size=16)
    assert [r[-1] for r in s.rows] == [16, 8, 4]
    assert s.rows[2] == (8, 8, 8, 0, 4)  # 4 // 7 == 0: no x7 branch


def write(tmp_path, text, name="s.json"):
    p = tmp_path / name
    p.write_text(text)
    return p


ROW = [8, 4, 0, 0, 56]


@pytest.mark.parametrize(
    "text, layers, message",
    [
        ("{not json", None, "not valid JSON"),
        (json.dumps([[8, 4, 0, 56]]), [1], "row 0 has 4 numbers; expected 5"),
        (json.dumps([[8, -4, 0, 0, 56]]), [1], "negative channel count"),
        (json.dumps([[0, 0, 0, 0, 56]]), [1], "row 0 has no channels in any scale"),
        (json.dumps([ROW] * 17), None, "17 rows fits no known depth"),
        (json.dumps([[8, 4.5, 0, 0, 56]]), [1], "expected an integer"),
        (json.dumps([ROW, [8, 4, 0, 0, 27]]), [1, 1], "row 1 (layer2.0) has side 27"),
        (json.dumps([ROW] * 3), [1, 1], "3 rows, but layers 1,1 need 2"),
        (json.dumps({"rows": [ROW], "layers": [1], "scales": [1, 2, 2, 7]}), None, "distinct positive integers"),
        (json.dumps({"rows": [ROW], "layers": [1], "stem": "tiny"}), None, "stem 'tiny' is unknown"),
        (json.dumps({"layers": [1]}), None, "no 'rows' key"),
        (json.dumps("hello"), None, "expected a list of rows"),
        (json.dumps({"rows": [[1, 0, 0, 5, 4]], "layers": [1], "stem": "small", "image_size": 4}), None,
         "gives 5 channels to scale x7"),
    ],
)
def test_malformed_structures_raise_one_clear_value_error(tmp_path, text, layers, message):
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as err:
        Structure.load(path, layers=layers)
    text = str(err.value)
    assert message in text
    assert str(path) in text
    assert "\n" not in text


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="structure file not found"):
        Structure.load(tmp_path / "nope.json")


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        path = Structure.published("scalenet50").save(tmp_path / "s.json")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_writes_are_atomic_and_keep_the_old_file_on_failure(tmp_path):
    from scalenet.fileio import atomic_write

    path = Structure.published("scalenet50").save(tmp_path / "s.json")
    before = path.read_text()

    def half_then_crash(f):
        f.write(b"[[1, 2")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, half_then_crash)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temp file left behind


def test_summary_rows_add_up(tiny):
    summary = tiny.summary()
    assert sum(b["macs"] for b in summary["blocks"]) + tiny.stem_macs() + tiny.num_features * 1000 == summary["macs"]
    assert summary["blocks"][0]["kernel_sizes"] == [3, 3, 0, 3]
    assert summary["blocks"][2]["kernel_sizes"] == [3, 0, 3, 0]
