"""h11's request-head reader with its event built by ``_h11_patch.request_event`` (installed by
``_h11_patch.fast_request_events``) gives h11's own reader's verdict on every input: the same
``Request`` or the same error, message and status hint, and the same bytes left in the buffer.

The corpus is the differential suite's (valid requests, every smuggling vector, seeded random
mutations of both), each fed whole to a fresh buffer for each reader.
"""

from __future__ import annotations

import random
from typing import Any

import h11
from h11 import _readers
from h11._receivebuffer import ReceiveBuffer

from test_parser_differential import SEED, VALID, _mutate, _smuggling_corpus
from trio_rack.http1 import _h11_patch
from trio_rack.http1 import connection as _connection  # noqa: F401  (installs the h11 patches)


def _verdict(reader: Any, data: bytes) -> tuple[Any, bytes]:
    buf = ReceiveBuffer()
    buf += data
    try:
        result: Any = reader(buf)
        if isinstance(result, h11.Request):  # every part, raw header names included
            result = (type(result), result.method, result.target, result.http_version, result.headers._full_items)
    except h11.LocalProtocolError as exc:
        result = ("refused", type(exc), str(exc), exc.error_status_hint)
    return result, bytes(buf)


def _corpus() -> list[bytes]:
    base = VALID + _smuggling_corpus()
    rng = random.Random(SEED)
    return base + [_mutate(rng, rng.choice(base)) for _ in range(3000)]


def test_the_patch_is_installed_over_h11s_reader() -> None:
    assert _readers.READERS[(h11.CLIENT, h11.IDLE)] is _h11_patch._read_request_head
    assert _h11_patch.fast_request_events()  # idempotent
    assert _readers.maybe_read_from_IDLE_client is not _h11_patch._read_request_head


def test_every_input_gets_h11s_own_verdict() -> None:
    original = _readers.maybe_read_from_IDLE_client  # h11's function, still its module's name
    differences = []
    accepted = 0
    for data in _corpus():
        ours, theirs = _verdict(_h11_patch._read_request_head, data), _verdict(original, data)
        if ours != theirs:
            differences.append((data, ours, theirs))
        accepted += isinstance(theirs[0], tuple) and theirs[0][0] is h11.Request
    assert differences == []
    assert accepted > 100  # the corpus exercises the fast path, not only refusals
