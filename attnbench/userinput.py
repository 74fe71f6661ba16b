"""Reading what users hand us, safely: bounded file reads, one YAML loader, file-name slugs.

- `read_user_text(path, what)`: only regular files (a FIFO, a directory or /dev/zero would block or
  never end), at most `max_bytes`, UTF-8; every failure is one AttnbenchError line.
- `load_yaml(text, where)`: PyYAML's safe loader with duplicate keys refused, at most `MAX_ALIASES`
  aliases, nesting at most `MAX_DEPTH` deep and at most `MAX_NODES` values once aliases are expanded
  (an alias bomb is refused while it is still small), no self-referencing anchors.
- `slug(name)`: a suite name -> a safe file-name stem (never a directory).
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from pathlib import Path
from typing import Any, Callable

import yaml

from attnbench.errors import AttnbenchError

MAX_DEPTH = 32  # nesting of YAML collections; a suite needs 4
MAX_ALIASES = 64
MAX_NODES = 100_000  # values after alias expansion
MAX_SUITE_BYTES = 1 << 20


class YamlInputError(AttnbenchError):
    """YAML that is malformed or exceeds the loader's bounds; the message carries the line when known."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


def read_user_text(path: str | Path, what: str, *, max_bytes: int | None = None, hint: str = "") -> str:
    """The text of a regular file, or one AttnbenchError saying what is wrong with `path`."""
    shown = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AttnbenchError(f"{shown}: {what} not found{hint}") from None
    except (OSError, ValueError) as exc:  # ENAMETOOLONG, a NUL in the name, permissions
        raise AttnbenchError(f"{shown!r}: cannot open {what} ({_reason(exc)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AttnbenchError(f"{shown}: is a directory, not a {what}{hint}")
    if not stat.S_ISREG(st.st_mode):
        raise AttnbenchError(f"{shown}: not a regular file (a pipe or device?); pass a {what}{hint}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise AttnbenchError(f"{shown}: {st.st_size} bytes is too large for a {what} (at most {max_bytes})")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AttnbenchError(f"{shown}: cannot read {what} ({_reason(exc)})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise AttnbenchError(f"{shown}:{line}: not UTF-8 text; a {what} must be a UTF-8 text file") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return "the name contains a NUL byte" if "null byte" in str(exc) else str(exc).splitlines()[0]


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader + duplicate keys refused + bounds on aliases and nesting (checked while composing)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def fetch_flow_collection_start(self, TokenClass):  # noqa: N803 - PyYAML hook
        """Refuse `[`/`{` nesting past MAX_DEPTH as the scanner meets it: the scanner keeps one pending simple key
        per open flow collection and walks them all for every token, so a deep nest costs time quadratic in its
        depth long before the composer would see it."""
        if self.flow_level >= MAX_DEPTH:
            raise YamlInputError(f"nested more than {MAX_DEPTH} levels deep", self.line + 1)
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent, index):  # noqa: D401 - PyYAML hook
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise YamlInputError(f"more than {MAX_ALIASES} aliases (*name); expand them", mark.line + 1)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlInputError(f"nested more than {MAX_DEPTH} levels deep", mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise YamlInputError("a mapping key must be a plain value", key_node.start_mark.line + 1) from None
            if key in seen:
                raise YamlInputError(
                    f"duplicate key {str(key)[:60]!r} (first on line {seen[key]}); keep one",
                    key_node.start_mark.line + 1,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def compose_and_load(text: str) -> tuple[yaml.Node | None, Any]:
    """(the node tree, for line numbers; the data) of one YAML document, parsed once, with the bounds of
    `load_yaml`."""

    def both(loader: _BoundedLoader) -> tuple[yaml.Node | None, Any]:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)

    node, data = _run_loader(text, both)
    _check_size(data)
    return node, data


def _run_loader(text: str, method: Callable[[_BoundedLoader], Any]) -> Any:
    """`method(_BoundedLoader(text))` with its errors as YamlInputError (message, line)."""
    loader = _new_loader(text)
    try:
        return method(loader)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc) from None
    except RecursionError:
        raise YamlInputError(f"nested more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()


def _new_loader(text: str) -> _BoundedLoader:
    try:
        return _BoundedLoader(text)
    except yaml.YAMLError as exc:  # the reader refuses control characters up front
        raise _yaml_error(exc) from None


def load_yaml(text: str) -> Any:
    """Parse one YAML document with the bounds above; raises YamlInputError (message, line)."""
    data = _run_loader(text, _BoundedLoader.get_single_data)
    _check_size(data)
    return data


def _yaml_error(exc: yaml.YAMLError) -> YamlInputError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc).splitlines()[0]
    if isinstance(exc, yaml.reader.ReaderError):
        problem = f"unprintable character {exc.character!r}" if isinstance(exc.character, str) else "not UTF-8"
        line = None
    return YamlInputError(f"malformed YAML: {problem}", line)


def _check_size(data: Any) -> None:
    """Refuse documents that expand (through aliases) past MAX_NODES values or refer to themselves."""
    count = 0
    stack: list[tuple[Any, frozenset[int]]] = [(data, frozenset())]
    while stack:
        obj, path = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise YamlInputError(f"more than {MAX_NODES} values once aliases are expanded (an alias bomb?)")
        if isinstance(obj, (list, dict)):
            if id(obj) in path:
                raise YamlInputError("an anchor refers to itself (&a [*a]); a suite cannot be recursive")
            inner = path | {id(obj)}
            items = obj.values() if isinstance(obj, dict) else obj
            stack.extend((v, inner) for v in items)
            if isinstance(obj, dict):
                stack.extend((k, inner) for k in obj)


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
MAX_SLUG = 80


def slug(name: str, default: str = "suite") -> str:
    """A file-name stem from a suite name: ASCII letters, digits, '.', '_', '+', '-'; other runs become
    '-'; no leading dots or dashes; at most MAX_SLUG characters. '/abs/path' -> 'abs-path', '../../x' -> 'x'."""
    text = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode()
    text = _UNSAFE.sub("-", text).strip(".-_+")
    text = re.sub(r"\.{2,}", ".", text)[:MAX_SLUG].strip(".-_+")
    return text or default
