import json
import subprocess
import sys
from pathlib import Path

import pytest

from scalenet import Structure
from scalenet.cli import main

from conftest import PUBLISHED
from helpers import refused


def run(*args):
    """The CLI as a user runs it: a separate process, through ``python -m scalenet``."""
    return subprocess.run([sys.executable, "-m", "scalenet", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_info_json_reports_the_published_figures(name, capsys):
    assert main(["info", name, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["macs"], out["params"]) == PUBLISHED[name]
    assert isinstance(out["macs"], int) and isinstance(out["params"], int)
    assert len(out["blocks"]) == len(Structure.published(name).rows)


def test_info_table(capsys):
    assert main(["info", "scalenet50_light"]) == 0
    out = capsys.readouterr().out
    assert "layer4.2" in out and "2,861,475,840 MACs" in out and "23,631,912 params" in out
    # layer1.2 is [30, 27, 7, 0] at side 56: shares 47/42/11/0 %, no x7 kernel
    line = next(l for l in out.splitlines() if l.startswith("layer1.2 "))
    assert line.split("|")[1].split() == ["30", "27", "7", "0"]
    assert line.split("|")[2].split() == ["47", "42", "11", "0"]
    assert line.split("|")[3].split() == ["3x3", "3x3", "3x3", "-"]


def test_info_image_size_and_structure_file(tmp_path, tiny, capsys):
    path = tiny.save(tmp_path / "tiny.json")
    assert main(["info", str(path), "--image-size", "28", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["image_size"] == 28 and out["macs"] == tiny.macs(28)


def test_info_bare_list_needs_layers(tmp_path, capsys):
    path = tmp_path / "bare.json"
    path.write_text(json.dumps([[8, 4, 0, 0, 56], [8, 0, 4, 0, 28]]))
    assert main(["info", str(path)]) == 2
    assert "pass the stage depths" in capsys.readouterr().err
    assert main(["info", str(path), "--layers", "1,1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] == Structure.load(path, layers=[1, 1]).macs()


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "structure file not found"),
        ("{oops", "not valid JSON"),
        ("[[1, 2, 3]]", "fits no known depth"),
        ('{"rows": [[1, 2, 3]], "layers": [1]}', "row 0 has 3 numbers"),
        ('{"rows": [[1, -2, 0, 0, 56]], "layers": [1]}', "negative channel count"),
        ('{"rows": [[0, 0, 0, 0, 56]], "layers": [1]}', "no channels in any scale"),
    ],
)
def test_bad_structures_get_one_line_and_exit_code_2(tmp_path, content, expected):
    path = tmp_path / "s.json"
    if content is not None:
        path.write_text(content)
    result = run("info", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scalenet: error: ") and expected in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_name_and_console_script():
    result = run("info", "resnet50")
    assert result.returncode == 2 and "unknown model 'resnet50'" in result.stderr
    script = Path(sys.executable).with_name("scalenet")
    assert script.exists(), "the console script is not installed beside the interpreter"
    ok = subprocess.run([str(script), "info", "scalenet50", "--json"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["macs"] == PUBLISHED["scalenet50"][0]


def test_help_defaults_come_from_the_config_dataclasses():
    from scalenet.cli import build_parser
    from scalenet.detection import DetectConfig
    from scalenet.allocation import SUPERNET_IMAGES
    from scalenet.training import TrainConfig

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices

    def help_of(command, flag):
        return next(a.help for a in sub[command]._actions if flag in a.option_strings)

    assert help_of("train", "--epochs") == f"default {TrainConfig().epochs}"
    assert help_of("train", "--batch-size") == f"default {TrainConfig().batch_size}"
    assert f"(default {TrainConfig().wd})" in help_of("train", "--wd")
    assert help_of("allocate", "--epochs") == f"default the fewest that show each supernet {SUPERNET_IMAGES:,} images"
    assert help_of("detect-train", "--lr").startswith(f"default {DetectConfig().lr} ")
    assert f"(default {DetectConfig().min_size}," in help_of("detect-train", "--min-size")


def test_augment_and_resume_mean_the_same_in_every_command(tmp_path, capsys):
    """--augment/--no-augment in every command that trains (each config's own default when
    neither is given); a bare --resume is strict and --resume auto starts when there is nothing."""
    from scalenet.cli import build_parser
    from scalenet.cli.options import train_config
    from scalenet.study import STUDY_RECIPE
    from scalenet.training import TrainConfig

    parse = build_parser().parse_args
    train = ["train", "--model", "m.json", "--data", "d", "--out", "o"]
    allocate = ["allocate", "--data", "d", "--out", str(tmp_path / "a.json")]
    assert train_config(parse(train)).augment is TrainConfig().augment is True
    assert train_config(parse([*train, "--no-augment"])).augment is False
    assert train_config(parse([*allocate, "--no-augment"])).augment is False
    assert train_config(parse([*allocate, "--augment"])).augment is True
    study = ["study", "--data", "d", "--out", "s"]
    assert parse(study).augment is None and STUDY_RECIPE.augment is False
    assert parse([*study, "--augment"]).augment is True and parse([*study, "--no-augment"]).augment is False
    detect = ["detect-train", "--coco-json", "c.json", "--images", "i", "--out", "o"]
    for command in (train, allocate, detect):
        assert parse([*command, "--resume"]).resume is True
        assert parse([*command, "--resume", "auto"]).resume == "auto"
        assert parse(command).resume is False
    # allocate's strict resume: there must be supernet runs to continue (refused before any data is read)
    assert main([*allocate, "--resume"]) == 2
    assert capsys.readouterr().err.strip() == (f"scalenet: error: --resume: no supernet runs in {tmp_path / 'a.runs'}; "
                                               "start without --resume (or --resume auto)")


def test_refusals_name_the_option_as_typed(tmp_path, capsys):
    sidecar = tmp_path / "x.scores.json"
    assert main(["allocate", "--scores", str(sidecar), "--out", str(tmp_path / "y.json"), "--no-augment"]) == 2
    assert "--no-augment does not apply with --scores" in capsys.readouterr().err


def test_old_spellings_still_work_hidden_from_help_with_a_note(tmp_path, capsys):
    """Flags renamed with the supernet (format 2) keep their old spelling as a hidden alias."""
    from scalenet.cli import build_parser

    new, old = tmp_path / "new.json", tmp_path / "old.json"
    common = ["allocate", "--data", "fashion-mnist", "--layers", "1,1", "--width", "8"]
    assert main([*common, "--write-supernet", str(new), "--supernet-width", "6"]) == 0
    assert "note" not in capsys.readouterr().err
    assert main([*common, "--write-seed", str(old), "--seed-width", "6"]) == 0
    err = capsys.readouterr().err
    assert "--write-seed is now spelled --write-supernet" in err and "--seed-width is now spelled --supernet-width" in err
    assert old.read_text() == new.read_text()
    commands = build_parser().commands
    for command, pairs in {"allocate": [("--write-seed", "--write-supernet"), ("--seed-width", "--supernet-width")],
                           "study": [("--seed-epochs", "--supernet-epochs"), ("--seed-subset", "--supernet-subset")]}.items():
        text = commands[command].format_help()
        actions = {o: a for a in commands[command]._actions for o in a.option_strings}
        for was, now in pairs:
            assert was not in text and now in text
            assert actions[was].dest == actions[now].dest and actions[was].type is actions[now].type
    # a refusal names an old spelling as typed
    sidecar = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "demo-quick-cpu" / "scalenet.scores.json"
    assert main(["allocate", "--scores", str(sidecar), "--seed-width", "6", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("scalenet: note:") and "--seed-width does not apply with --scores" in err[1]


def test_a_library_error_names_the_setting_and_the_cli_its_flag(tmp_path, capsys):
    import pickle

    from scalenet.allocation import WidthBudget
    from scalenet.errors import SettingError, within

    with pytest.raises(SettingError) as e:
        WidthBudget(0.0)
    assert str(e.value) == "width_mult must be positive and finite, got 0.0" and e.value.settings == ("width_mult",)
    sidecar = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "demo-quick-cpu" / "scalenet.scores.json"
    refused(capsys, ["allocate", "--scores", sidecar, "--width-mult", "9", "--out", tmp_path / "x.json"],
            "impossible budget: --width-mult 9 keeps")
    refused(capsys, ["allocate", "--scores", sidecar, "--width-mult", "9", "--out", tmp_path / "x.json"],
            "or raise --supernet-width")
    # values, switches, names without an option, braces that mark nothing; and across processes
    e = SettingError("pass {resume='auto'} or {resume=True}; {scope='global'}; {other} and {unmarked}",
                     "resume", "scope", "other")
    assert str(e) == "pass resume='auto' or resume=True; scope='global'; other and {unmarked}"
    spelled = e.render({"resume": "--resume", "scope": "--scope"}.get)
    assert spelled == "pass --resume auto or --resume; --scope global; other and {unmarked}"
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is SettingError and again.render({"resume": "--resume", "scope": "--scope"}.get) == spelled
    # an error wrapped in context keeps its marks; any other error becomes plain text after it
    wrapped = within("the uniform arm: ", SettingError("raise {supernet_width}", "supernet_width"))
    assert str(wrapped) == "the uniform arm: raise supernet_width"
    assert wrapped.render({"supernet_width": "--supernet-width"}.get) == "the uniform arm: raise --supernet-width"
    assert str(within("x: ", ValueError("{y} stays"))) == "x: {y} stays"
