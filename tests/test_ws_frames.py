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
