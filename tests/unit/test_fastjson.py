"""FastParser parses exactly what ovs.json's own parser does, however the stream is cut:
several messages back to back, split anywhere (inside strings, right after a backslash,
inside a multi-byte character's text), escapes, nesting, numbers."""

from __future__ import annotations

import json

import ovs.json
from hypothesis import given, settings
from hypothesis import strategies as st

from dragonflow.ovs.fastjson import FastParser

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53),
                     st.floats(allow_nan=False, allow_infinity=False),
                     st.text(alphabet=st.characters(codec="utf-8"), max_size=12))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20)
_messages = st.dictionaries(st.text(max_size=5), _values, min_size=1, max_size=4)


def _parse_all(parser_cls: type, stream: str, cuts: list[int]) -> list[object]:
    """Feed ``stream`` in the chunks ``cuts`` makes, as ovs.jsonrpc.Connection.recv does."""
    out: list[object] = []
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    parser = None
    pending = ""
    for chunk in chunks:
        pending += chunk
        while pending:
            if parser is None:
                parser = parser_cls()
            pending = pending[parser.feed(pending):]
            if parser.is_done():
                out.append(parser.finish())
                parser = None
            else:
                break
    return out


@settings(max_examples=100, deadline=None)
@given(st.lists(_messages, min_size=1, max_size=4), st.lists(st.integers(0, 10_000),
                                                             max_size=12))
def test_same_values_as_ovs_parser_however_cut(msgs: list[dict], cuts: list[int]) -> None:
    stream = "".join(json.dumps(m, separators=(",", ":"), ensure_ascii=False) for m in msgs)
    stream += "".join(f' {json.dumps(m, indent=1)}\n' for m in msgs[:1])  # whitespace too
    want = [*msgs, *msgs[:1]]
    assert _parse_all(FastParser, stream, cuts) == want


def test_an_ovsdb_update_parses_as_ovs_parses_it() -> None:
    update = ('{"id":null,"method":"update3","params":[["monid","DF_NB"],'
              '"5d6c7a2e-1111-4222-8333-944455556666",{"Log":{"0f1e2d3c-aaaa-4bbb-8ccc-ddddeeee'
              'ffff":{"insert":{"rev":4097,"i":0,"key":"/df/obj/port/p1","value":"{\\"id\\":'
              '\\"p1\\",\\"name\\":\\"caf\\u00e9\\"}","b64":false,"pr":["set",'
              '["#16","/df/#16"]]}}},"Meta":{"1b2c":{"modify":{"rev":4097,"x":1.5}}}}]}')
    for cut in (0, 7, 100, 101, 150, len(update) - 1):
        assert _parse_all(FastParser, update * 2, [cut]) == \
            _parse_all(ovs.json.Parser, update * 2, [cut]) == [json.loads(update)] * 2


def test_escapes_split_at_every_position() -> None:
    msg = {"k": 'a\\"b\\\\', "v": ["\\u00e9\\\\", {"x": ']}\\"[{'}]}
    text = json.dumps(msg)
    for cut in range(len(text) + 1):
        assert _parse_all(FastParser, text + text, [cut]) == [msg, msg]


def test_errors_are_strings_like_ovs() -> None:
    p = FastParser()
    p.feed('{"a": tru}')
    assert p.is_done() and isinstance(p.finish(), str)
    p = FastParser(check_trailer=True)
    p.feed('{"a": 1} x')
    assert isinstance(p.finish(), str)
    p = FastParser(check_trailer=True)
    p.feed("42")  # a top-level number: complete only at finish
    assert p.finish() == 42
