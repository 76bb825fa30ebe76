"""The README's Python examples run as written (in a folder holding the files they name)."""

import importlib.util
import json
import re
from pathlib import Path


import scalenet
from scalenet.checkpoint import save_weights
from scalenet.compat import timm_reads_local_dir

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = _blocks("python")
    assert len(blocks) >= 2
    # the files the examples name: the release's weight file and the README's own structure example
    save_weights(scalenet.create_model("scalenet50"), tmp_path / "scalenet50.pth")
    (tmp_path / "my_structure.json").write_text(_blocks("json")[0])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in blocks:
        if 'timm.create_model("local-dir:' in code and not timm_reads_local_dir():
            continue  # as the README says: timm reads local-dir: folders from 1.0.16 (the floor is 1.0.15)
        if "scalenet.keras" in code and importlib.util.find_spec("keras") is None:
            continue  # an optional extra (tests/keras_checks.py covers the API on both backends)
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README is ours
    assert json.loads((tmp_path / "learned.json").read_text())["rows"]
    assert (tmp_path / "learned.scores.json").is_file() and (tmp_path / "learned.png").is_file()


# ---------------------------------------------------------------------------- the command line
def _synopsis_options() -> dict[str, set[str]]:
    """Per command, the options its synopses in the README name: code blocks with ``[--``
    (optional parts), lines from ``scalenet COMMAND`` on, with their indented continuations."""
    found: dict[str, set[str]] = {}
    blocks, current = [], None
    for line in README.read_text().splitlines():  # fences: "```lang" opens, "```" closes
        if line.startswith("```"):
            current = [] if current is None else blocks.append("\n".join(current))
        elif current is not None:
            current.append(line)
    for block in blocks:
        if " [--" not in block:
            continue
        command = None
        for line in block.splitlines():
            m = re.match(r"scalenet ([a-z-]+)\b", line)
            if m:
                command = m.group(1)
            elif not line.startswith(" "):
                command = None
            if command is not None:
                text = line.split("#", 1)[0]
                found.setdefault(command, set()).update(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
    return found


def _parser_options() -> dict[str, dict[str, "argparse.Action"]]:
    import argparse

    from scalenet.cli import build_parser

    subs = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    return {name: {o: a for a in sub._actions for o in a.option_strings if o.startswith("--") and o != "--help"
                   and a.help is not argparse.SUPPRESS} for name, sub in subs.items()}


def test_every_command_option_is_in_the_readme_synopsis_and_vice_versa():
    readme, parser = _synopsis_options(), _parser_options()
    assert set(parser) <= set(readme), f"commands without a synopsis: {sorted(set(parser) - set(readme))}"
    for command, options in parser.items():
        missing, unknown = sorted(set(options) - readme[command]), sorted(readme[command] - set(options))
        assert not missing and not unknown, f"scalenet {command}: not in the README {missing}, not in --help {unknown}"


def test_every_option_with_a_default_shows_it_in_its_help():
    import argparse

    for command, options in _parser_options().items():
        for option, action in options.items():
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreConstAction)) or action.required:
                continue
            if action.default is not None and action.default is not False:
                assert action.help and "default" in action.help, f"scalenet {command} {option}: no default in its help"
