"""A hostile ferry/1 client (issue 21, finding 1): it logs in, creates an upload of large chunks,
opens chunk streams and sends each payload as 1-byte STREAM frames at every other offset, so
the server receives millions of separate pieces and no gap is ever filled. Stream credit
refills as the server reads, so nothing but the server's own bound stops it.

quinn (like every QUIC stack's API) writes a stream in order; aioquic lets this script choose
the offset of every STREAM frame it sends. It never re-sends a lost piece: a loss is one more
gap. Run by `tests/tests/e2e/fragments.rs`; prints one JSON line:
{"pieces": N, "stopped": {stream: code}, "rejects": [code, ...], "closed": code or null,
"reason": the close's reason phrase or null}.

    python3 fragments.py HOST PORT TOKEN [--streams 16] [--chunk 67108864] [--seconds 40] [--version 7]
"""

import argparse
import asyncio
import json
import ssl
import struct
import time

import aioquic.asyncio.client as client_module
from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.packet_builder import QuicPacketBuilderStop
from aioquic.quic.stream import QuicStreamFrame, QuicStreamSender


def frame(obj):
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


class Fragmenter(QuicStreamSender):
    """Sends `header` in order, then one byte at every other offset after it, for ever."""

    sent = 0  # pieces sent, over every stream

    def __init__(self, stream_id, header):
        super().__init__(stream_id=stream_id, writable=True)
        self.header = header
        self.next = 0
        self.buffer_is_empty = False

    @property
    def next_offset(self):
        return self.next

    def get_frame(self, max_size, max_offset=None):
        if self.reset_pending or self._reset_error_code is not None:
            return None
        if self.next < len(self.header):
            stop = min(len(self.header), self.next + max(max_size, 0))
            if max_offset is not None:
                stop = min(stop, max_offset)
            if stop <= self.next:
                return None
            data, at = self.header[self.next : stop], self.next
            self.next = stop
            self.highest_offset = max(self.highest_offset, stop)
            if stop == len(self.header):
                self.next += 1  # the first gap
            return QuicStreamFrame(data=data, offset=at)
        if max_size < 1 or (max_offset is not None and self.next + 1 > max_offset):
            return None
        at = self.next
        self.next += 2
        self.highest_offset = max(self.highest_offset, at + 1)
        Fragmenter.sent += 1
        return QuicStreamFrame(data=b"\x07", offset=at)

    def on_data_delivery(self, delivery, start, stop, fin):
        pass  # a lost piece is one more gap, never re-sent


class Attacker(QuicConnection):
    """Packs as many of a fragmenting stream's pieces into each packet as fit."""

    def _write_stream_frame(self, builder, space, stream, max_offset):
        if not isinstance(stream.sender, Fragmenter):
            return super()._write_stream_frame(builder, space, stream, max_offset)
        used = 0
        for _ in range(200):
            try:
                step = super()._write_stream_frame(builder, space, stream, max_offset)
            except QuicPacketBuilderStop:
                break
            if step == 0 and builder.remaining_flight_space < 24:
                break
            used += step
            if step == 0:
                break
        return used


class Protocol(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.control = bytearray()
        self.frames = asyncio.Queue()
        self.stopped = {}
        self.closed = None
        self.reason = None

    def quic_event_received(self, event):
        if isinstance(event, events.StreamDataReceived) and event.stream_id == 0:
            self.control += event.data
            while len(self.control) >= 4:
                (n,) = struct.unpack(">I", self.control[:4])
                if len(self.control) < 4 + n:
                    break
                self.frames.put_nowait(json.loads(self.control[4 : 4 + n]))
                del self.control[: 4 + n]
        elif isinstance(event, events.StopSendingReceived):
            self.stopped[event.stream_id] = event.error_code
        elif isinstance(event, events.ConnectionTerminated):
            self.closed = event.error_code
            self.reason = event.reason_phrase

    async def next(self, timeout=15):
        return await asyncio.wait_for(self.frames.get(), timeout)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("token")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=64 << 20)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--version", type=int, default=7, help="the protocol version to speak")
    args = parser.parse_args()

    config = QuicConfiguration(
        is_client=True, alpn_protocols=["ferry/1"], verify_mode=ssl.CERT_NONE
    )
    config.max_data = 1 << 24
    config.max_stream_data = 1 << 22
    client_module.QuicConnection = Attacker
    async with connect(
        args.host, args.port, configuration=config, create_protocol=Protocol
    ) as proto:
        quic = proto._quic
        quic.send_stream_data(0, frame({"type": "hello", "version": args.version, "token": args.token}))
        proto.transmit()
        welcome = await proto.next()
        assert welcome["type"] == "welcome", welcome
        quic.send_stream_data(
            0,
            frame(
                {
                    "type": "create",
                    "req": 1,
                    "file_name": "fragments.bin",
                    "size": args.streams * args.chunk,
                    "chunk_size": args.chunk,
                }
            ),
        )
        proto.transmit()
        created = await proto.next()
        assert created["type"] == "created", created
        upload = created["upload"]["upload_id"]
        # Let the server measure the path's round trip before the streams start: it reads out
        # of order only on a long path.
        for _ in range(10):
            await proto.ping()
        streams = []
        for index in range(args.streams):
            sid = quic.get_next_available_stream_id(is_unidirectional=True)
            stream = quic._get_or_create_stream_for_send(sid)
            header = frame(
                {"type": "chunk", "upload_id": upload, "index": index, "size": args.chunk}
            )
            stream.sender = Fragmenter(sid, header)
            streams.append(sid)
        proto.transmit()
        rejects = []
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline and proto.closed is None:
            if len(proto.stopped) == len(streams):
                break
            try:
                f = await proto.next(timeout=0.05)
                if f.get("type") in ("reject", "error"):
                    rejects.append(f["code"])
            except asyncio.TimeoutError:
                pass
            proto.transmit()
        # What is still on the control stream.
        while not proto.frames.empty():
            f = proto.frames.get_nowait()
            if f.get("type") in ("reject", "error"):
                rejects.append(f["code"])
        print(
            json.dumps(
                {
                    "pieces": Fragmenter.sent,
                    "stopped": {str(k): v for k, v in proto.stopped.items()},
                    "rejects": rejects,
                    "closed": proto.closed,
                    "reason": proto.reason,
                }
            ),
            flush=True,
        )


asyncio.run(main())
