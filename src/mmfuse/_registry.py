"""Small explicit registries: one dict per extension point, filled by a decorator.

Modules that register entries are imported explicitly by their package ``__init__``; nothing is
discovered by scanning folders. Unknown or duplicate names raise with the list of known ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(word: str, choices: Iterable[str], *, n: int = 3, of: bool = False) -> str:
    """``"; did you mean 'x'?"`` (or ``'x' or 'y'``) naming the choices closest to ``word``, or ``""`` when none is
    close (:func:`difflib.get_close_matches` at its default cutoff). ``of``: say which word it is about
    (``"; did you mean 'x' for 'w'?"``), for messages naming several."""
    close = difflib.get_close_matches(str(word), list(dict.fromkeys(choices)), n=n)
    if not close:
        return ""
    about = f" for {word!r}" if of else ""
    return f"; did you mean {' or '.join(map(repr, close))}{about}?"


class UnknownNameError(ValueError):
    """A name that is not in a registry; the message lists the known names."""


class Registry(Generic[T]):
    """A named mapping from string names to builders (classes or factory functions).

    Args:
        kind: what the entries are, used in error messages (e.g. ``"fusion head"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a second entry with the same name raises."""

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice; names must be unique")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Returns the entry for ``name``, or raises :class:`UnknownNameError` listing the known names."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            hint = did_you_mean(name, self._entries)
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}{hint}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
