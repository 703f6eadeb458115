"""RFC 8785 canonical JSON: published vectors, number formatting, strictness, the fast paths."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemcp.audit import jcs

VECTORS = json.loads((Path(__file__).parent / "vectors" / "jcs_cyberphone.json").read_text())


@pytest.mark.parametrize("case", VECTORS, ids=[case["name"] for case in VECTORS])
def test_cyberphone_vectors(case: dict[str, str]) -> None:
    expected = case["output"].encode("utf-8")
    assert jcs.dumps(jcs.loads(case["input"])) == expected
    assert jcs.CanonicalParser().parse(expected) == jcs.loads(case["input"])


@pytest.mark.parametrize(
    ("value", "text"),
    [
        # RFC 8785 Appendix B / ECMAScript Number.prototype.toString
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (56.0, "56"),
        (-1.5, "-1.5"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (123456789012345680000.0, "123456789012345680000"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (9007199254740992.0, "9007199254740992"),
        (295147905179352830000.0, "295147905179352830000"),
        (333333333.33333329, "333333333.3333333"),
        (4.5, "4.5"),
        (2e-3, "0.002"),
        (1e-27, "1e-27"),
    ],
)
def test_numbers_format_like_ecmascript(value: float, text: str) -> None:
    assert jcs.format_number(value) == text


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 2**53, -(2**53)])
def test_numbers_outside_i_json_are_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        jcs.dumps({"n": bad})


def test_keys_sort_by_utf16_code_units() -> None:
    # U+1F602 (surrogates D83D DE02) sorts before U+FB33 in UTF-16, after it in code points.
    assert jcs.dumps({"\ufb33": 1, "\U0001f602": 2}) == '{"\U0001f602":2,"\ufb33":1}'.encode()


def test_strict_parsing() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        jcs.loads('{"a":1,"a":2}')
    with pytest.raises(ValueError):
        jcs.loads('{"a":NaN}')
    with pytest.raises(ValueError):
        jcs.dumps({"s": "\ud800"})  # lone surrogate
    with pytest.raises(TypeError):
        jcs.dumps({1: "non-string key"})
    with pytest.raises(TypeError):
        jcs.dumps({"x": object()})


@pytest.mark.parametrize(
    "line",
    [
        b'{"b":1,"a":2}',  # unsorted
        b'{"a": 1}',  # whitespace
        b'{"a":1,"a":1}',  # duplicate
        b'{"a":"\\u0041"}',  # needless escape
        b'{"a":"\\/"}',
        b'{"a":1.0}',  # not the shortest number
        b'{"a":1E2}',
        b'{"a":-0}',
        b'{"a":12345678901234567890}',  # beyond I-JSON
        b'{"a":"\\ud800"}',
        '{"é":1,"a":2}'.encode(),  # unsorted, non-ASCII path
    ],
)
def test_parser_rejects_non_canonical_lines(line: bytes) -> None:
    with pytest.raises(ValueError):
        jcs.CanonicalParser().parse(line)


@pytest.mark.parametrize("line", [b"{", b"\xff", b'{"a":NaN}', b'{"a":Infinity}'])
def test_parser_rejects_malformed_lines(line: bytes) -> None:
    with pytest.raises(ValueError) as info:
        jcs.CanonicalParser().parse(line)
    assert not isinstance(info.value, jcs.NotCanonical)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-jcs.MAX_SAFE_INTEGER, jcs.MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
def test_canonical_form_is_stable_and_parses_back(value: Any) -> None:
    encoded = jcs.dumps(value)
    parsed = jcs.CanonicalParser().parse(encoded)
    assert jcs.dumps(parsed) == encoded
    assert parsed == value


plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-jcs.MAX_SAFE_INTEGER, jcs.MAX_SAFE_INTEGER)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet=st.characters(max_codepoint=127), max_size=8), children)
    ),
    max_leaves=12,
)


@given(plain_values)
def test_the_c_fast_path_equals_the_canonicalizer_on_plain_values(value: Any) -> None:
    try:
        expected = jcs.dumps(value)
    except ValueError:  # lone surrogates
        with pytest.raises(ValueError):
            jcs.dumps_plain(value)
        return
    assert jcs.dumps_plain(value) == expected


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_number_formatting_round_trips(value: float) -> None:
    assert float(jcs.format_number(value)) == value
