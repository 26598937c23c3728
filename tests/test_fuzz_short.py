"""A short profile of bench/fuzz.py for CI: the same properties, a few hundred examples.

The long run is ``python bench/fuzz.py --examples 100000``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import fuzz  # noqa: E402

EXAMPLES = 300


def test_decoder_survives_arbitrary_bytes_at_any_split() -> None:
    fuzz.codec_stream_property(EXAMPLES)()


def test_decoder_round_trips_every_encodable_object() -> None:
    fuzz.codec_roundtrip_property(EXAMPLES)()


@pytest.fixture
def harness() -> Iterator[fuzz.ServiceHarness]:
    h = fuzz.ServiceHarness()
    yield h
    h.close()


def test_service_handle_never_raises_and_replies_by_the_protocol(
    harness: fuzz.ServiceHarness,
) -> None:
    fuzz.service_property(EXAMPLES, harness)()
    assert harness.replies > EXAMPLES  # the scenarios really ran requests


def test_the_checks_catch_a_broken_reply(harness: fuzz.ServiceHarness) -> None:
    """The harness is not vacuous: a reply outside the protocol fails it."""
    for bad in (
        {"purpose": "ping", "ok": False, "error": "internal_error", "message": "x"},
        {"purpose": "ping"},
        {"purpose": "ping", "ok": True, "x": float("nan")},
        {"purpose": "ping", "ok": True, "x": "\ud800"},
    ):
        with pytest.raises((AssertionError, ValueError)):
            harness.check_reply(bad, "ping")
