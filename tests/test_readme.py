"""The README's and the documentation's examples run as written, their command lines name
options that exist, and their links resolve."""

import importlib.util
import json
import re
import textwrap
from pathlib import Path

import pytest

import scalenet
from scalenet.checkpoint import save_weights
from scalenet.compat import timm_reads_local_dir

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)


def test_the_documentation_has_its_pages():
    names = {p.name for p in PAGES}
    assert {"README.md", "index.md", "models.md", "training.md", "allocation.md", "cli.md", "api.md"} <= names
    assert len(README.read_text().splitlines()) <= 250  # a README a newcomer reads in five minutes


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p, "python")], ids=lambda p: p.name)
def test_python_examples_run(page, tmp_path, monkeypatch):
    """Each page's Python blocks run in order in one namespace, in a folder holding the files they
    name: the release's weight file and the structure example of docs/models.md."""
    save_weights(scalenet.create_model("scalenet50"), tmp_path / "scalenet50.pth")
    (tmp_path / "my_structure.json").write_text(_blocks(ROOT / "docs" / "models.md", "json")[0])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    ran = 0
    for code in _blocks(page, "python"):
        if 'timm.create_model("local-dir:' in code and not timm_reads_local_dir():
            continue  # as the page says: timm reads local-dir: folders from 1.0.16 (the floor is 1.0.15)
        if "scalenet.keras" in code and importlib.util.find_spec("keras") is None:
            continue  # an optional extra (tests/keras_checks.py covers the API on both backends)
        exec(compile(code, str(page), "exec"), namespace)  # noqa: S102 - the pages are ours
        ran += 1
    assert ran or importlib.util.find_spec("keras") is None
    if "learned.json" in page.read_text():
        assert json.loads((tmp_path / "learned.json").read_text())["rows"]
        assert (tmp_path / "learned.scores.json").is_file() and (tmp_path / "learned.png").is_file()


def _slug(heading: str) -> str:
    """The anchor MkDocs (toc) and GitHub give a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[\s]+", "-", text)


def test_readme_links_resolve():
    """mkdocs build --strict checks the links between pages; this checks the README's into them."""
    for target in re.findall(r"\]\(((?!https?:)[^)]+)\)", README.read_text()):
        path, _, anchor = target.partition("#")
        assert (ROOT / path).exists(), f"README links to a missing file: {target}"
        if anchor and path.endswith(".md"):
            anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", (ROOT / path).read_text(), flags=re.M)}
            assert anchor in anchors, f"README links to a missing heading: {target}"


# ---------------------------------------------------------------------------- the command line
def _command_options(synopses: bool) -> dict[str, set[str]]:
    """Per command, the options that the pages' code blocks name on lines from ``scalenet COMMAND``
    on, with their indented continuations: in synopses (blocks with ``[--``, optional parts) or
    in every block."""
    found: dict[str, set[str]] = {}
    blocks = []
    for page in PAGES:
        current = None
        for line in page.read_text().splitlines():  # fences: "```lang" opens, "```" closes
            if line.lstrip().startswith("```"):
                current = [] if current is None else blocks.append("\n".join(current))
            elif current is not None:
                current.append(line)
    for block in map(textwrap.dedent, blocks):
        if synopses and " [--" not in block:
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


def test_every_command_option_is_in_a_synopsis_and_vice_versa():
    readme, parser = _command_options(synopses=True), _parser_options()
    assert set(parser) <= set(readme), f"commands without a synopsis: {sorted(set(parser) - set(readme))}"
    for command, options in parser.items():
        missing, unknown = sorted(set(options) - readme[command]), sorted(readme[command] - set(options))
        assert not missing and not unknown, f"scalenet {command}: in no synopsis {missing}, not in --help {unknown}"


def test_every_option_with_a_default_shows_it_in_its_help():
    import argparse

    for command, options in _parser_options().items():
        for option, action in options.items():
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreConstAction)) or action.required:
                continue
            if action.default is not None and action.default is not False:
                assert action.help and "default" in action.help, f"scalenet {command} {option}: no default in its help"


def test_every_command_line_in_the_pages_names_existing_options():
    """Examples too, not only synopses: a renamed option fails here until the pages follow, and
    an old spelling (a hidden alias) is not shown."""
    from scalenet.cli import build_parser

    subs = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    known = {name: {o for a in sub._actions if type(a).__name__ != "_OldSpelling" for o in a.option_strings}
             for name, sub in subs.items()}
    used = _command_options(synopses=False)
    assert {"train", "allocate", "export", "study"} <= set(used)
    for command, options in used.items():
        assert command in known, f"the pages name an unknown command: scalenet {command}"
        assert options <= known[command], f"scalenet {command}: the pages name {sorted(options - known[command])}"
