"""Errors that name a setting.

The library names its settings as the Python API spells them (``width_mult``, ``resume="auto"``);
a command line spells the same settings as flags (``--width-mult``, ``--resume auto``). A
:class:`SettingError` marks each mention of a setting in its message, so that the library user
reads the keyword they typed and the command line renders the flag (:meth:`SettingError.render`).
"""

from __future__ import annotations

import re
from typing import Callable

__all__ = ["SettingError", "SettingPathNotFound", "mention", "within"]


def mention(name: str, value: object = None) -> str:
    """A marked mention of setting ``name`` (with ``value``) for a :class:`SettingError` message
    built at run time; in an f-string ``{{name}}`` writes the same."""
    return f"{{{name}}}" if value is None else f"{{{name}={value}}}"


def within(context: str, error: Exception) -> "SettingError":
    """``error``'s message after ``context`` (plain text), as a :class:`SettingError` that keeps
    the marks of ``error`` when it has them: a wrapped error still names its settings."""
    if isinstance(error, SettingError):
        return SettingError(context + error.template, *error.settings)
    return SettingError(context + str(error))


class SettingError(ValueError):
    """A bad value or combination of settings, in one line. The message marks each setting it
    names in braces, as its keyword argument: ``{width_mult}``, or with a value ``{resume='auto'}``
    (a switch that is on: ``{name=True}``); ``settings`` lists the names marked.

    ``str()`` is the library's spelling: ``SettingError("{width_mult} must be positive",
    "width_mult")`` reads ``width_mult must be positive``. Braces around anything but a listed
    name stay as they are."""

    def __init__(self, template: str, *settings: str):
        self.template, self.settings = template, tuple(settings)
        super().__init__(self.render(lambda name: None))

    def __reduce__(self):  # across processes (a worker's error) with its marks
        return type(self), (self.template, *self.settings)

    def render(self, spell: Callable[[str], str | None]) -> str:
        """The message with each marked setting spelled by ``spell`` (the command line:
        ``width_mult`` -> ``--width-mult``; ``{resume='auto'}`` -> ``--resume auto``;
        ``{name=True}`` -> the flag alone). Where ``spell`` returns None, the keyword stays."""
        if not self.settings:
            return self.template
        names = "|".join(re.escape(n) for n in self.settings)

        def one(m: re.Match) -> str:
            name, value = m.group(1), m.group(2)
            flag = spell(name)
            if flag is None:
                return name if value is None else f"{name}={value}"
            if value is None or value == "True":
                return flag
            return f"{flag} {value.strip(chr(39) + chr(34))}"

        return re.sub(rf"\{{({names})(?:=([^{{}}]*))?\}}", one, self.template)


class SettingPathNotFound(FileNotFoundError, SettingError):
    """A path a setting names, or needs, is not there: a :class:`FileNotFoundError` that names
    its settings as :class:`SettingError` does."""

    def __new__(cls, template: str, *settings: str):
        return super().__new__(cls, template)

    def __init__(self, template: str, *settings: str):
        SettingError.__init__(self, template, *settings)

    def __str__(self) -> str:
        return self.args[0]
