"""BASELINES, not the gateway: what users would write instead, a few lines each.

Each peer speaks the gateway's wire format (meta, one event per token, done)
on the same routes (POST /v1/sse, POST /v1/ndjson, /v1/ws with a `start`
message), so the benchmark drives gateway and peers with the same client.
They are deliberately naive: a task per stream that sleeps between tokens
and writes one event per token, as the tutorials do.

    python -m loadtests.bench.peers NAME PORT
"""


import asyncio
import json
import sys
import time

from websockets.utils import accept_key

__all__ = ["PEERS", "floor_protocol", "main"]

# peer -> the transports it serves (gateway/names.py)
PEERS = {
    "fastapi": ("sse_post", "ndjson", "ws"),  # StreamingResponse / WebSocket.send_text + asyncio.sleep
    "sse-starlette": ("sse_post",),  # sse_starlette.EventSourceResponse
    "fastapi-sse": ("sse_post",),  # FastAPI's native fastapi.sse.EventSourceResponse (0.135+)
    "floor": ("sse_post", "ndjson", "ws"),  # raw uvloop Protocol, pre-encoded bytes, one shared ticker
}

TEXT = "tok "  # every peer sends the same short token text


def _params(body: dict) -> tuple[int, float, float]:
    sim = body.get("sim") or {}
    return int(body.get("max_tokens", 200)), sim.get("ttft_ms", 100) / 1000, sim.get("itl_ms", 20) / 1000


def _meta() -> dict:
    return {"type": "meta", "seq": 0, "stream_id": "peer", "model": "peer", "created": time.time()}


def _done(n: int) -> dict:
    return {"type": "done", "seq": n + 1, "finish_reason": "stop", "tokens": n, "sha256": ""}


# -- FastAPI, as the tutorials write it --------------------------------------

def fastapi_app():
    from fastapi import Body, FastAPI, WebSocket, WebSocketDisconnect
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    async def events(body: dict):
        n, ttft, itl = _params(body)
        yield _meta()
        await asyncio.sleep(ttft)
        for i in range(1, n + 1):
            yield {"type": "token", "seq": i, "text": TEXT}
            if i < n:
                await asyncio.sleep(itl)
        yield _done(n)

    @app.post("/v1/sse")
    async def sse(body: dict = Body()):

        async def gen():
            async for e in events(body):
                yield f"id: {e['seq']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    @app.post("/v1/ndjson")
    async def ndjson(body: dict = Body()):

        async def gen():
            async for e in events(body):
                yield json.dumps(e) + "\n"

        return StreamingResponse(gen(), media_type="application/x-ndjson")

    @app.websocket("/v1/ws")
    async def ws(websocket: WebSocket):
        await websocket.accept()
        try:
            while True:
                body = await websocket.receive_json()
                async for e in events(body):
                    await websocket.send_text(json.dumps(e))
        except WebSocketDisconnect:
            pass

    return app


def sse_starlette_app():
    from fastapi import Body, FastAPI
    from sse_starlette import EventSourceResponse

    app = FastAPI()

    @app.post("/v1/sse")
    async def sse(body: dict = Body()):
        n, ttft, itl = _params(body)

        async def gen():
            yield {"id": "0", "event": "meta", "data": json.dumps(_meta())}
            await asyncio.sleep(ttft)
            for i in range(1, n + 1):
                yield {"id": str(i), "event": "token", "data": json.dumps({"type": "token", "seq": i, "text": TEXT})}
                if i < n:
                    await asyncio.sleep(itl)
            yield {"id": str(n + 1), "event": "done", "data": json.dumps(_done(n))}

        return EventSourceResponse(gen())

    return app


def fastapi_sse_app():
    from fastapi import Body, FastAPI
    from fastapi.sse import EventSourceResponse, ServerSentEvent

    app = FastAPI()

    @app.post("/v1/sse", response_class=EventSourceResponse)
    async def sse(body: dict = Body()):
        n, ttft, itl = _params(body)
        yield ServerSentEvent(data=_meta(), event="meta", id="0")
        await asyncio.sleep(ttft)
        for i in range(1, n + 1):
            yield ServerSentEvent(data={"type": "token", "seq": i, "text": TEXT}, event="token", id=str(i))
            if i < n:
                await asyncio.sleep(itl)
        yield ServerSentEvent(data=_done(n), event="done", id=str(n + 1))

    return app


# -- the floor: no framework, bytes encoded once, one timer for all streams --

def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _ws_frame(data: bytes) -> bytes:
    n = len(data)
    head = bytes((0x81, n)) if n < 126 else bytes((0x81, 126)) + n.to_bytes(2, "big")
    return head + data


class _Floor:
    """Per-format frames for every seq, built once; a ticker walks the due connections."""

    def __init__(self, n: int = 200) -> None:
        self.frames: dict[str, list[bytes]] = {}
        for fmt in ("sse", "ndjson", "ws"):
            out = []
            for i in range(1, n + 1):
                j = json.dumps({"type": "token", "seq": i, "text": TEXT}, separators=(",", ":")).encode()
                if fmt == "sse":
                    out.append(_chunk(b"id: %d\nevent: token\ndata: %b\n\n" % (i, j)))
                elif fmt == "ndjson":
                    out.append(_chunk(j + b"\n"))
                else:
                    out.append(_ws_frame(j))
            self.frames[fmt] = out
        self.due: dict[float, list] = {}  # deadline slot -> connections
        self.slot = 0.001
        self.loop = asyncio.get_event_loop()
        self.loop.call_soon(self.tick)

    def add(self, conn, at: float) -> None:
        key = round(at / self.slot)
        self.due.setdefault(key, []).append(conn)

    def tick(self) -> None:
        now = self.loop.time()
        key = round(now / self.slot)
        for k in [k for k in self.due if k <= key]:
            for conn in self.due.pop(k):
                conn.step(now)
        self.loop.call_at(now + self.slot, self.tick)


class _FloorConn(asyncio.Protocol):
    floor: _Floor

    def connection_made(self, transport) -> None:
        self.t = transport
        self.buf = b""
        self.fmt = None
        self.ws = False

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.ws and self.fmt is None:
            self._ws_message()
            return
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep or self.fmt is not None:
            return
        lines = head.split(b"\r\n")
        path = lines[0].split(b" ")[1]
        headers = {k.lower(): v for k, v in (line.split(b": ", 1) for line in lines[1:])}
        if path == b"/v1/ws":
            accept = accept_key(headers[b"sec-websocket-key"].decode()).encode()
            self.t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: %b\r\n\r\n" % accept)
            self.ws, self.buf = True, rest
            self._ws_message()
            return
        length = int(headers.get(b"content-length", b"0"))
        if len(rest) < length:
            return
        self.buf = b""
        media = b"text/event-stream" if path == b"/v1/sse" else b"application/x-ndjson"
        self.t.write(b"HTTP/1.1 200 OK\r\ncontent-type: %b\r\ntransfer-encoding: chunked\r\n\r\n" % media)
        self._start(path[4:].decode(), json.loads(rest[:length]))

    def _ws_message(self) -> None:
        b = self.buf
        if len(b) < 6 or len(b) < 6 + (b[1] & 0x7F):
            return
        if b[0] != 0x81:  # a close frame (or anything else): done
            self.t.close()
            return
        n = b[1] & 0x7F  # control messages are short
        mask, payload = b[2:6], b[6:6 + n]
        self.buf = b[6 + n:]
        self._start("ws", json.loads(bytes(c ^ mask[i % 4] for i, c in enumerate(payload))))

    def _start(self, fmt: str, body: dict) -> None:
        self.fmt = fmt
        self.n, ttft, self.itl = _params(body)
        self.i = 0
        self._event(_meta())
        self.next = self.floor.loop.time() + ttft
        self.floor.add(self, self.next)

    def _event(self, obj: dict) -> None:
        j = json.dumps(obj).encode()
        if self.fmt == "sse":
            self.t.write(_chunk(b"event: %s\ndata: %b\n\n" % (obj["type"].encode(), j)))
        elif self.fmt == "ndjson":
            self.t.write(_chunk(j + b"\n"))
        else:
            self.t.write(_ws_frame(j))

    def step(self, now: float) -> None:
        if self.t.is_closing():
            return
        self.t.write(self.floor.frames[self.fmt][self.i])
        self.i += 1
        if self.i < self.n:
            self.next += self.itl
            self.floor.add(self, self.next)
            return
        self._event(_done(self.n))
        if self.fmt == "ws":
            self.fmt = None
        else:
            self.t.write(b"0\r\n\r\n")
            self.fmt = None


def floor_protocol() -> type[_FloorConn]:
    _FloorConn.floor = _Floor()
    return _FloorConn


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    name, port = argv[0], int(argv[1])
    import uvloop

    if name == "floor":
        uvloop.install()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(loop.create_server(floor_protocol(), "127.0.0.1", port, backlog=4096))
        print(f"floor listening on {port}", flush=True)
        try:
            loop.run_forever()
        finally:
            server.close()
        return
    import uvicorn

    app = {"fastapi": fastapi_app, "sse-starlette": sse_starlette_app, "fastapi-sse": fastapi_sse_app}[name]()
    # uvicorn's defaults, as a user gets them (uvloop and httptools when installed).
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=4096)


if __name__ == "__main__":
    main()
