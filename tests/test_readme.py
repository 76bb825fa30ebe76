"""The README's Python examples run as written (in a folder holding the files they name)."""

import json
import re
from pathlib import Path


import scalenet
from scalenet.checkpoint import save_weights

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
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README is ours
    assert json.loads((tmp_path / "learned.json").read_text())["rows"]
    assert (tmp_path / "learned.scores.json").is_file() and (tmp_path / "learned.png").is_file()
