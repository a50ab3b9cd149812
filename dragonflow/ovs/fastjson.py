"""A fast JSON parser for the OVS Python library (``ovs.json.Parser``'s interface).

The ``ovs`` package from PyPI carries no C extension, so its JSON-RPC connections -- the
OVSDB IDL of the ovsdb NB driver's watches, its transactions, ovsdbapp's connection to the
local Open vSwitch database -- parse every received message one character at a time in
Python: about 3.5 us per character, milliseconds per message. :class:`FastParser` finds the
end of the top-level value with two regular expressions (one step per quote, bracket or
backslash, not per character) and decodes it with the standard library's C decoder.
:func:`install` makes the library use it when its own C parser is missing.
"""

from __future__ import annotations

import json
import re
from typing import Any

import ovs.json

_OUTSIDE = re.compile(r'["{}\[\]]')  # what matters outside a string
_INSIDE = re.compile(r'["\\]')  # what matters inside one
_DECODER = json.JSONDecoder()
MAX_BYTES = 256 * 2**20  # a message this large is refused (ovs' own parser has no limit)


class FastParser:
    """Incremental parser of ONE JSON value: ``feed`` returns how many characters of its
    input belong to the value (the rest is the next message's), ``is_done`` says whether the
    value is complete, ``finish`` returns it -- or an error message (a ``str``), as
    ``ovs.json.Parser`` does."""

    def __init__(self, check_trailer: bool = False) -> None:
        self.check_trailer = check_trailer
        self._parts: list[str] = []
        self._size = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False  # the last chunk ended right after a backslash in a string
        self._done = False
        self._error: str | None = None

    def _scan(self, s: str) -> int:
        """The index just after the end of the top-level value in ``s``, or -1."""
        i = 0
        if self._escaped:
            self._escaped = False
            i = 1
        n = len(s)
        while i <= n:
            if self._in_string:
                m = _INSIDE.search(s, i)
                if m is None:
                    return -1
                if m.group() == "\\":
                    if m.end() >= n:
                        self._escaped = True
                        return -1
                    i = m.end() + 1
                    continue
                self._in_string = False
                i = m.end()
                if self._depth == 0:
                    return i  # a top-level string
                continue
            m = _OUTSIDE.search(s, i)
            if m is None:
                return -1
            c = m.group()
            if c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth <= 0:
                    return m.end()
            i = m.end()
        return -1

    def feed(self, s: str) -> int:
        if self._done:
            return 0
        end = self._scan(s)
        part = s if end < 0 else s[:end]
        self._parts.append(part)
        self._size += len(part)
        if self._size > MAX_BYTES:
            self._error = f"JSON message larger than {MAX_BYTES} bytes"
            self._done = True
            return len(s)
        if end < 0:
            return len(s)
        self._done = True
        if self.check_trailer and s[end:].strip():
            self._error = "trailing garbage at end of input"
            return len(s)
        return end

    def is_done(self) -> bool:
        return self._done

    def finish(self) -> Any:
        if self._error is not None:
            return self._error
        text = "".join(self._parts)
        try:
            value, end = _DECODER.raw_decode(text, len(text) - len(text.lstrip()))
        except json.JSONDecodeError as e:
            return f"syntax error: {e}"
        if text[end:].strip():
            return "trailing garbage at end of input"
        return value


def install() -> None:
    """Make the OVS library parse with :class:`FastParser` unless it has its C parser.
    Idempotent; process-wide (every OVSDB connection of the process benefits)."""
    if ovs.json.PARSER != ovs.json.PARSER_C:
        ovs.json.Parser = FastParser  # type: ignore[misc,assignment]
