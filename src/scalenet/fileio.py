"""Atomic file writes: a reader (or a killed run) never sees a half-written file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_text", "check_writable_dir", "check_output_file", "check_output_files",
           "replace_directory",
           "read_json"]


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Calls ``write(fileobj)`` on a temp file beside ``path``, then renames it into place.

    The rename is atomic on POSIX file systems, so ``path`` holds either its old content or
    the complete new content. On any error the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    directory = check_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def cache_root() -> Path:
    """scalenet's cache folder: ``$XDG_CACHE_HOME/scalenet``, or ``~/.cache/scalenet``."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scalenet"


def check_writable_dir(directory: str | os.PathLike) -> Path:
    """Raises a one-line error unless ``directory`` exists and is writable."""
    directory = Path(directory)
    if not directory.is_dir():
        above = next((p for p in [directory, *directory.parents] if p.exists()), None)
        if above is not None and not above.is_dir():
            raise NotADirectoryError(f"output directory {directory} cannot be made: {above} is a file")
        raise FileNotFoundError(f"output directory does not exist: {directory}")
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"output directory is not writable: {directory}")
    return directory


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_directory(new: str | os.PathLike, out: str | os.PathLike) -> Path:
    """The folder ``new`` renamed to ``out`` (same file system); an existing ``out`` is moved
    aside first and removed after, so ``out`` is never a mix of the two."""
    new, out = Path(new), Path(out)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def check_output_file(path: str | os.PathLike, flag: str = "--out", example: str = "out.json", *,
                      force: bool = True, what: str = "") -> Path:
    """Raises a one-line error unless ``path`` can be written as a file (its folder exists and
    is writable, and it is not a directory) and, unless ``force``, does not exist yet. ``flag``,
    ``example`` and ``what`` (what the file is, when it is not the option's own file) go into
    the message. Commands call it for every output before they start the work."""
    path = Path(path)
    check_writable_dir(path.parent)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give a file name such as {path / example}")
    if not force and path.exists():
        raise FileExistsError(f"{flag}: {path}{f' ({what})' if what else ''} exists; pass --force to overwrite it, "
                              "or choose another name")
    return path


def check_output_files(paths: dict[str | os.PathLike, str], flag: str, example: str, force: bool) -> list[Path]:
    """:func:`check_output_file` for each of ``paths`` (path -> what it is)."""
    return [check_output_file(p, flag, example, force=force, what=what) for p, what in paths.items()]


def read_json(path: str | os.PathLike, what: str, expected: str) -> object:
    """The JSON content of ``path``, or one clear error: ``"<what> not found"``, not a text file,
    or invalid JSON with its line and column; ``expected`` says what the file should be."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}; expected {expected}")
    try:
        return json.loads(p.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"{p}: not a text file; expected {expected}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); expected {expected}") from None


def check_output_dir(path: str | os.PathLike, option: str, force: bool = False) -> Path:
    """An output folder, checked before any work: its parent writable, and no file or folder of
    that name unless ``force`` (a folder is then replaced when the output is written)."""
    out = Path(path)
    check_writable_dir(out.parent)
    if out.exists() and not force:
        raise FileExistsError(f"{option} {out} exists; choose another folder or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} is a file; give a folder name")
    return out
