"""The websocket's own server frames (trio_rack.websocket.session.server_frame) are wsproto's
bytes: every opcode, payload sizes across all three length forms (7-bit, 16-bit, 64-bit) and
their boundaries; and a session with no extension sends them, with deflate wsproto frames."""

from __future__ import annotations

import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode

from trio_rack.websocket.session import server_frame

#: Every size to 1,100, every size around the 16-bit and 64-bit boundaries, every 13th between.
SIZES = sorted({*range(0, 1101), *range(65000, 66101), *range(1101, 70001, 13), 70000})
DATA = bytes(range(256)) * (70001 // 256 + 1)


def wsproto_frame(opcode: Opcode, payload: bytes) -> bytes:
    return bytes(FrameProtocol(client=False, extensions=[])._serialize_frame(opcode, payload))


@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION])
def test_data_frames_are_wsprotos_bytes(opcode: Opcode) -> None:
    for n in SIZES:
        payload = DATA[:n]
        assert server_frame(int(opcode), payload) == wsproto_frame(opcode, payload), n


@pytest.mark.parametrize("opcode", [Opcode.CLOSE, Opcode.PING, Opcode.PONG])
def test_control_frames_are_wsprotos_bytes(opcode: Opcode) -> None:
    for n in range(126):  # a control frame's payload is at most 125 bytes
        payload = DATA[:n]
        assert server_frame(int(opcode), payload) == wsproto_frame(opcode, payload), n


def test_messages_are_what_wsproto_sends_for_them() -> None:
    for text in ["", "a", "ü" * 70, "€" * 22000, "x" * 65535, "\U0001f600" * 20000]:
        proto = FrameProtocol(client=False, extensions=[])
        assert server_frame(0x1, text.encode("utf-8")) == bytes(proto.send_data(text))
    for blob in [b"", b"\x00", DATA[:126], DATA[:65536]]:
        proto = FrameProtocol(client=False, extensions=[])
        assert server_frame(0x2, blob) == bytes(proto.send_data(blob))


def test_a_string_that_is_not_utf8_fails_as_wsproto_does() -> None:
    with pytest.raises(UnicodeEncodeError):
        FrameProtocol(client=False, extensions=[]).send_data("\ud800")
    with pytest.raises(UnicodeEncodeError):
        server_frame(0x1, "\ud800".encode("utf-8"))


async def test_a_session_sends_its_own_frames_and_refuses_to_send_once_closed() -> None:
    """Over a real socket pair served by the HTTP/1 driver: text, bytes, bytearray and
    memoryview messages of every length form arrive as sent (decoded by wsproto's client
    codec), and after the peer's close ``send_message`` raises ConnectionClosed, as wsproto's
    state check made it before."""
    import trio
    from wsproto.frame_protocol import Opcode as Op

    from test_ws_raw_socket import handshake, pair, text_message
    from trio_rack import websocket

    messages: list[str | bytes | bytearray | memoryview] = [
        "", "é" * 63, "t" * 126, "u" * 65536, b"", DATA[:125], bytearray(DATA[:300]), memoryview(DATA[:70000])]
    refused: list[int] = []
    sent = trio.Event()

    async def app(env: dict[str, object]) -> object:
        async with websocket.accept(env, max_message_size=1 << 20) as ws:
            for message in messages:
                await ws.send_message(message)
            sent.set()
            try:
                await ws.get_message()
            except websocket.ConnectionClosed:
                pass
            try:
                await ws.send_message("too late")
            except websocket.ConnectionClosed as exc:
                refused.append(exc.code)
        return -1, {}, []

    async with pair(app) as (client, _):
        await handshake(client)
        for message in messages:
            if isinstance(message, str):
                assert await text_message(client) == message
            else:
                got = b""
                while True:
                    frame = await client.frame()
                    assert frame.opcode in (Op.BINARY, Op.CONTINUATION)
                    got += frame.payload
                    if frame.message_finished:
                        break
                assert got == bytes(message)
        await sent.wait()
        await client.stream.send_all(bytes(client.codec.close(1000, "bye")))
        frame = await client.frame()
        assert frame.opcode is Op.CLOSE and frame.payload[0] == 1000
    assert refused == [1000]


# ------------------------------------------------------------------ whole_frame (the read side)

def client_frame(first: int, payload: bytes, *, key: bytes = b"\x37\xfa\x21\x3d", masked: bool = True,
                 length_form: int | None = None) -> bytes:
    """A frame as a client would send it; ``length_form`` forces 7, 16 or 64 bits of length."""
    import struct

    n = len(payload)
    form = length_form or (7 if n < 126 else 16 if n < 65536 else 64)
    mask_bit = 0x80 if masked else 0
    if form == 7:
        head = bytes((first, mask_bit | n))
    elif form == 16:
        head = bytes((first, mask_bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, mask_bit | 127)) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + body


def wsproto_verdict(data: bytes, max_size: int) -> object:
    """What the session would make of ``data`` through wsproto: the message if it is exactly one
    whole message within ``max_size``, else a description of what wsproto yields instead."""
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import BytesMessage, TextMessage

    conn = Connection(ConnectionType.SERVER)
    conn.receive_data(data)
    events = list(conn.events())
    if (len(events) == 1 and type(events[0]) in (TextMessage, BytesMessage) and events[0].message_finished
            and len(events[0].data if isinstance(events[0].data, bytes) else events[0].data.encode()) <= max_size):
        return events[0].data
    return ("other", [type(e).__name__ for e in events])


def check(data: bytes, max_size: int = 1 << 20) -> None:
    from trio_rack.websocket.session import whole_frame

    ours = whole_frame(data, max_size)
    theirs = wsproto_verdict(data, max_size)
    if ours is not None:  # whenever we decode, wsproto decodes the same message, nothing else
        assert type(ours) is type(theirs) and ours == theirs, (data[:20], ours, theirs)


def test_whole_frames_decode_as_wsproto_decodes_them() -> None:
    import random

    from trio_rack.websocket.session import whole_frame

    rng = random.Random(12)
    texts = ["", "a", "é", "€uro", "\U0001f600", "x" * 125, "y" * 126, "z" * 65535, "ü" * 40000]
    for text in texts:
        payload = text.encode("utf-8")
        keys = (b"\x00" * 4, b"\xff" * 4, b"\x37\xfa\x21\x3d", bytes(rng.randrange(256) for _ in range(4)))
        for key in keys:
            frame = client_frame(0x81, payload, key=key)
            check(frame)
            if len(payload) < 65536:  # the 7- and minimal 16-bit forms are decoded here
                assert whole_frame(frame, 1 << 20) == text
    for n in [*range(0, 300), *range(65400, 65536)]:
        payload = bytes(rng.randrange(256) for _ in range(n))
        frame = client_frame(0x82, payload, key=bytes(rng.randrange(256) for _ in range(4)))
        check(frame)
        assert whole_frame(frame, 1 << 20) == payload


def test_everything_else_is_left_to_wsproto() -> None:
    """Every first byte (FIN, RSV bits, all 16 opcodes), unmasked frames, non-minimal and 64-bit
    lengths, invalid UTF-8, messages over the limit, truncated and trailing bytes: either the
    same message as wsproto, or None (and wsproto decides)."""
    from trio_rack.websocket.session import whole_frame

    for first in range(256):
        for payload in (b"", b"hello", b"\xff\xfe", "é".encode()[:1], b"x" * 130):
            if len(payload) > 125 and first & 0x08:
                continue  # a control frame that long is not even expressible in 7 bits; see below
            frame = client_frame(first, payload)
            check(frame)
            if first not in (0x81, 0x82) or (first == 0x81 and payload in (b"\xff\xfe", b"\xc3")):
                assert whole_frame(frame, 1 << 20) is None, (first, payload)
            check(client_frame(first, payload, masked=False))
            assert whole_frame(client_frame(first, payload, masked=False), 1 << 20) is None
    for first in (0x81, 0x82):
        for n, form in [(0, 16), (5, 16), (125, 16), (0, 64), (5, 64), (200, 64), (65535, 64), (65536, 64)]:
            frame = client_frame(first, b"a" * n, length_form=form)
            check(frame)
            assert whole_frame(frame, 1 << 20) is None  # non-minimal, or 64-bit: wsproto's
        frame = client_frame(first, b"b" * 100)
        assert whole_frame(frame, 99) is None  # over the limit: wsproto's path fails it (1009)
        assert whole_frame(frame, 100) == (b"b" * 100 if first == 0x82 else "b" * 100)
        assert whole_frame(frame[:-1], 1 << 20) is None  # not all of it yet
        assert whole_frame(frame + frame, 1 << 20) is None  # more than one frame
        assert whole_frame(frame + b"\x81", 1 << 20) is None
        for cut in range(len(frame)):
            assert whole_frame(frame[:cut], 1 << 20) is None


async def test_whole_frame_is_used_only_where_wsprotos_parser_stands_between_messages() -> None:
    """Over a real socket pair: (1) a frame whose first byte came in an earlier read, and whose
    rest alone would parse as a whole empty text frame, is wsproto's (its buffer holds the first
    byte); (2) a whole text frame in the middle of a fragmented message is the protocol error
    it is (1002), not a message."""
    import trio
    import trio.testing
    from wsproto.frame_protocol import Opcode as Op

    from test_ws_raw_socket import echo_app, handshake, pair

    seen: list[object] = []
    async with pair(echo_app(seen)) as (client, _):
        await handshake(client)
        key = b"\x80\x01\x02\x03"  # with the first byte gone: 0x81 0x80 = FIN text, masked, empty
        frame = b"\x81\x81" + key + bytes([ord("a") ^ key[0]])
        assert client_frame(0x81, b"a", key=key) == frame
        await client.stream.send_all(frame[:1])
        await trio.testing.wait_all_tasks_blocked()  # the server has read the first byte
        await client.stream.send_all(frame[1:])
        echoed = await client.frame()
        assert (echoed.opcode, echoed.payload) == (Op.TEXT, "a")
        await client.send_text("after")
        assert (await client.frame()).payload == "after"
        # a fragment, a ping (its pong shows the fragment was read), then a whole text frame
        await client.stream.send_all(client_frame(0x01, b"part"))  # TEXT, not FIN
        await client.stream.send_all(client_frame(0x89, b"sync"))  # PING
        pong = await client.frame()
        assert (pong.opcode, pong.payload) == (Op.PONG, b"sync")
        await client.stream.send_all(client_frame(0x81, b"whole"))
        closing = await client.frame()
        assert closing.opcode is Op.CLOSE and closing.payload[0] == 1002
    assert seen[0].close_code == 1002  # type: ignore[attr-defined]


async def test_a_frame_whose_payload_is_a_whole_frame_is_one_message_whatever_the_reads() -> None:
    """Over a real socket pair: a binary frame's header (and mask) in one read and its payload
    in the next, where the payload's bytes on the wire are themselves one whole masked text
    frame.  wsproto's parser stands mid-frame (its buffer empty, no message begun: only
    ``_frame_decoder.header`` says so), so the second read is payload, not a message: the echo
    is the binary message, then the next frame is read as usual."""
    import trio
    import trio.testing
    from wsproto.frame_protocol import Opcode as Op

    from test_ws_raw_socket import echo_app, handshake, pair
    from trio_rack.websocket.session import whole_frame

    inner = client_frame(0x81, b"evil")
    assert whole_frame(inner, 1 << 20) == "evil"
    key = b"\x11\x22\x33\x44"
    outer = client_frame(0x82, bytes(b ^ key[i % 4] for i, b in enumerate(inner)), key=key)
    assert outer[6:] == inner
    seen: list[object] = []
    async with pair(echo_app(seen)) as (client, _):
        await handshake(client)
        await client.stream.send_all(outer[:6])
        await trio.testing.wait_all_tasks_blocked()  # the server has read the header
        await client.stream.send_all(outer[6:])
        echoed = await client.frame()
        assert (echoed.opcode, bytes(echoed.payload)) == (Op.BINARY, bytes(b ^ key[i % 4] for i, b in enumerate(inner)))
        await client.send_text("after")
        assert (await client.frame()).payload == "after"


async def test_a_wsproto_whose_parser_hides_its_position_gets_its_own_parser_for_every_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wsproto without the decoders' fields this relies on (a later release): the probe says
    so, and every read goes through wsproto's parser (whole_frame is never called), messages
    still echo."""
    from wsproto import Connection as WsConnection

    import trio_rack.websocket.session as session
    from test_ws_raw_socket import echo_app, handshake, pair

    assert session.PARSER_POSITION_KNOWN  # the wsproto installed here
    real_proto = WsConnection.__init__

    def init_without_decoders(self: WsConnection, *args: object, **kwargs: object) -> None:
        real_proto(self, *args, **kwargs)  # type: ignore[arg-type]
        del self._proto._frame_decoder

    monkeypatch.setattr(WsConnection, "__init__", init_without_decoders)
    assert session._parser_position_known() is False
    monkeypatch.undo()  # the sessions below keep their decoders: only the probe's verdict is kept
    monkeypatch.setattr(session, "PARSER_POSITION_KNOWN", False)
    calls: list[bytes] = []
    real_whole = session.whole_frame
    monkeypatch.setattr(session, "whole_frame", lambda data, size: calls.append(data) or real_whole(data, size))
    seen: list[object] = []
    async with pair(echo_app(seen)) as (client, _):
        await handshake(client)
        for text in ("one", "two"):
            await client.send_text(text)
            assert (await client.frame()).payload == text
    assert calls == []
