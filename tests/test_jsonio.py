"""Request bodies with a repeated key: the fast check on every body agrees with the parse
that keeps every pair, on texts made to trip it (colons in keys and values, escaped colons,
repeats at every depth)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from server.fhir import jsonio
from server.fhir.outcome import FhirError

_WORDS = ("a", "b", "a:b", ":", "url", "x\\u003ay", "\\u003A", "æ:ø", "\\\\u003a", "c")


def _text(rng: random.Random, depth: int = 0) -> str:
    """A JSON text with random objects (sometimes repeating a key), lists and scalars."""
    kind = rng.random() if depth < 4 else 1.0
    if kind < 0.35:
        keys = [rng.choice(_WORDS) for _ in range(rng.randint(0, 4))]
        return "{" + ", ".join(f'"{k}": {_text(rng, depth + 1)}' for k in keys) + "}"
    if kind < 0.5:
        return "[" + ",".join(_text(rng, depth + 1) for _ in range(rng.randint(0, 3))) + "]"
    return rng.choice(['"a:b"', '"\\u003a"', "1.50", "2", "true", "null", '":"', '"x"'])


def _repeats(value: Any) -> bool:
    """Ground truth: does any object of the parsed-with-pairs value repeat a key?"""
    if isinstance(value, list) and value and all(isinstance(p, tuple) for p in value):
        keys = [k for k, _ in value]
        return len(keys) != len(set(keys)) or any(_repeats(v) for _, v in value)
    if isinstance(value, list):
        return any(_repeats(v) for v in value)
    return False


def test_the_fast_check_misses_no_repeated_key() -> None:
    rng = random.Random(20261123)
    seen = {True: 0, False: 0}
    for _ in range(3000):
        text = _text(rng)
        truth = _repeats(json.loads(text, object_pairs_hook=list))
        seen[truth] += 1
        raw = text.encode()
        maybe = jsonio._repeats_a_key(raw, jsonio.loads(raw))
        assert maybe or not truth, text  # never misses one
        if b"\\u003" not in raw:
            assert maybe == truth, text  # and exact without escaped colons
        if truth:
            with pytest.raises(FhirError) as refused:
                jsonio.loads_request(raw)
            assert refused.value.status == 400
        else:
            assert jsonio.loads_request(raw) == jsonio.loads(raw)
    assert min(seen.values()) > 300  # both kinds were tried


def test_the_path_names_the_repeat() -> None:
    body = {"resourceType": "CarePlan", "activity": [{"detail": {"status": "x"}}]}
    text = json.dumps(body).replace('"status": "x"', '"status": "x", "status": "y"')
    with pytest.raises(FhirError) as refused:
        jsonio.loads_resource(text.encode())
    issue = refused.value.issues[0]
    assert (issue.code, issue.expression) == ("structure", ("CarePlan.activity[0].detail.status",))
