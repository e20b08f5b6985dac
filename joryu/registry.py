"""One registry type for everything joryu looks up by name: methods, reproductions, datasets and
models. ``register`` adds an entry, ``get`` finds one or raises one line with the closest names,
``names`` / ``items`` list them (optionally filtered)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from joryu.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (``kind`` is how an error names them: "method", "dataset"...).

    ``discover``: called before every lookup, once it has something to import (e.g. the modules
    that register themselves)."""

    def __init__(self, kind: str, discover: Callable[[], None] | None = None):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._discover = discover
        self._discovered = discover is None

    def _load(self) -> None:
        if not self._discovered:
            self._discovered = True
            self._discover()

    def register(self, name: str, entry: T) -> T:
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def get(self, name: str, hint: str = "") -> T:
        """The entry ``name``, or a ConfigError naming the closest spellings and what exists."""
        self._load()
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), list(self._entries), n=3)
            did = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}.{did} Known: {', '.join(sorted(self._entries))}"
                              + (f". {hint}" if hint else ""))
        return self._entries[name]

    def names(self, where: Callable[[str, T], bool] | None = None) -> list[str]:
        """Sorted names, those whose ``where(name, entry)`` is true when given."""
        self._load()
        return sorted(n for n, e in self._entries.items() if where is None or where(n, e))

    def items(self, where: Callable[[str, T], bool] | None = None) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names(where)]
