"""TCP fault proxies for failure drills: one per replica and store, so one replica can be cut
off alone.

A proxy listens on 127.0.0.1 and forwards every connection to its upstream. Its mode can be
switched at run time:

``pass``       forward as is.
``blackhole``  stop forwarding both ways but keep every socket open: bytes already sent are
               held (not dropped) and delivered once the mode is switched back, as TCP would
               deliver them after a partition heals. New connections are accepted and held too.
``latency``    delay every chunk by ``latency_ms`` in each direction (a round trip gets 2x).
``reset``      close every connection with a TCP RST; new connections are reset at once.

All proxies of a drill run on one asyncio loop. ``ProxyHub`` runs it on a thread of the
calling process; ``ProxyProcess`` runs it in a child process (``python -m
haexec.drill.proxy``) driven over stdin/stdout with one JSON object per line, so that the
drill's own threads never delay a forwarded byte (the GIL). The child exits when its stdin
closes, so it never outlives the drill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
MODES = ("pass", "blackhole", "latency", "reset")
_CHUNK = 65536


class ProxyError(Exception):
    """A proxy could not be created or controlled (one line)."""


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), not a FIN: the peer sees 'connection reset'."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    closed: bool = False

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        _abort(self.client)
        if self.upstream is not None:
            _abort(self.upstream)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in (self.client, self.upstream):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.close()


@dataclass(eq=False)
class _Proxy:
    name: str
    upstream: tuple[str, int]
    server: asyncio.AbstractServer | None = None
    port: int = 0
    mode: str = "pass"
    latency_s: float = 0.0
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # set: bytes may flow
    conns: set[_Conn] = field(default_factory=set)
    accepted: int = 0


class _Hub:
    """The proxies themselves; every method runs on the event loop."""

    def __init__(self) -> None:
        self.proxies: dict[str, _Proxy] = {}

    async def add(self, name: str, upstream_host: str, upstream_port: int, listen_port: int = 0) -> int:
        if name in self.proxies:
            raise ProxyError(f"proxy {name!r} exists already")
        proxy = _Proxy(name, (upstream_host, int(upstream_port)))
        proxy.gate.set()
        try:
            proxy.server = await asyncio.start_server(
                lambda r, w: self._serve(proxy, r, w), HOST, listen_port, reuse_address=True
            )
        except OSError as e:
            raise ProxyError(f"proxy {name}: cannot listen on {HOST}:{listen_port}: {e.strerror}") from None
        proxy.port = proxy.server.sockets[0].getsockname()[1]
        self.proxies[name] = proxy
        return proxy.port

    def _get(self, name: str) -> _Proxy:
        try:
            return self.proxies[name]
        except KeyError:
            raise ProxyError(f"no proxy named {name!r}") from None

    async def set_mode(self, name: str, mode: str, latency_ms: float = 0.0) -> dict[str, Any]:
        if mode not in MODES:
            raise ProxyError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
        proxy = self._get(name)
        proxy.mode = mode
        proxy.latency_s = max(0.0, float(latency_ms)) / 1000.0 if mode == "latency" else 0.0
        if mode == "blackhole":
            proxy.gate.clear()
        else:
            proxy.gate.set()
        if mode == "reset":
            for conn in list(proxy.conns):
                conn.abort()
            proxy.conns.clear()
        return self.describe(name)

    def describe(self, name: str) -> dict[str, Any]:
        proxy = self._get(name)
        return {
            "name": proxy.name,
            "port": proxy.port,
            "mode": proxy.mode,
            "latency_ms": round(proxy.latency_s * 1000.0, 3),
            "connections": len(proxy.conns),
            "accepted": proxy.accepted,
        }

    async def close(self) -> None:
        for proxy in self.proxies.values():
            if proxy.server is not None:
                proxy.server.close()
            proxy.gate.set()
            for conn in list(proxy.conns):
                conn.abort()
        self.proxies.clear()

    async def _serve(self, proxy: _Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proxy.accepted += 1
        conn = _Conn(writer)
        if proxy.mode == "reset":
            conn.abort()
            return
        proxy.conns.add(conn)
        try:
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*proxy.upstream), 10.0)
            except (TimeoutError, OSError):
                conn.abort()  # the upstream refused: so does the proxy, as the server would
                return
            conn.upstream = up_writer
            if conn.closed:  # reset while connecting
                _abort(up_writer)
                return
            await asyncio.gather(
                self._pump(proxy, conn, reader, up_writer),
                self._pump(proxy, conn, up_reader, writer),
                return_exceptions=True,
            )
        finally:
            proxy.conns.discard(conn)
            conn.close()

    async def _pump(
        self, proxy: _Proxy, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One direction: read, hold while blackholed, delay by the latency, write in order."""
        loop = asyncio.get_running_loop()
        queue: deque[tuple[float, bytes]] = deque()
        ready = asyncio.Event()
        done = False

        async def read() -> None:
            nonlocal done
            try:
                while not conn.closed:
                    await proxy.gate.wait()
                    data = await reader.read(_CHUNK)
                    if not data:
                        break
                    queue.append((loop.time() + proxy.latency_s, data))
                    ready.set()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                done = True
                ready.set()

        async def write() -> None:
            try:
                while not conn.closed:
                    if not queue:
                        if done:
                            break
                        ready.clear()
                        await ready.wait()
                        continue
                    due, data = queue[0]
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await proxy.gate.wait()
                    if conn.closed:
                        break
                    queue.popleft()
                    writer.write(data)
                    await writer.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                # One side is gone: so is the connection, once what was read is delivered.
                conn.close()

        await asyncio.gather(read(), write(), return_exceptions=True)


class ProxyHub:
    """The hub on an event loop thread of this process."""

    def __init__(self) -> None:
        self._hub = _Hub()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="haexec-drill-proxy", daemon=True)
        self._thread.start()

    def _call(self, coro: Any, timeout_s: float = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def add(self, name: str, upstream_host: str, upstream_port: int, listen_port: int = 0) -> int:
        return int(self._call(self._hub.add(name, upstream_host, upstream_port, listen_port)))

    def set_mode(self, name: str, mode: str, latency_ms: float = 0.0) -> dict[str, Any]:
        return dict(self._call(self._hub.set_mode(name, mode, latency_ms)))

    def describe(self, name: str) -> dict[str, Any]:
        async def get() -> dict[str, Any]:
            return self._hub.describe(name)

        return dict(self._call(get()))

    def close(self) -> None:
        if not self._loop.is_running():
            return
        with contextlib.suppress(Exception):
            self._call(self._hub.close(), 5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)


class ProxyProcess:
    """The hub in a child process, same interface as ProxyHub."""

    def __init__(self, preexec: Callable[[], None] | None = None, log_path: str | None = None) -> None:
        stderr = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "haexec.drill.proxy"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
                preexec_fn=preexec,
            )
        finally:
            if log_path:
                stderr.close()  # type: ignore[union-attr]
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            if self.proc.poll() is not None:
                raise ProxyError(f"the proxy process exited with status {self.proc.returncode}")
            try:
                self.proc.stdin.write((json.dumps(request) + "\n").encode())
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            except OSError as e:
                raise ProxyError(f"the proxy process is gone: {e}") from None
        if not line:
            raise ProxyError("the proxy process is gone")
        reply = json.loads(line)
        if "error" in reply:
            raise ProxyError(reply["error"])
        return dict(reply["result"])

    def add(self, name: str, upstream_host: str, upstream_port: int, listen_port: int = 0) -> int:
        reply = self._call(
            {"op": "add", "name": name, "host": upstream_host, "port": upstream_port, "listen": listen_port}
        )
        return int(reply["port"])

    def set_mode(self, name: str, mode: str, latency_ms: float = 0.0) -> dict[str, Any]:
        return self._call({"op": "mode", "name": name, "mode": mode, "latency_ms": latency_ms})

    def describe(self, name: str) -> dict[str, Any]:
        return self._call({"op": "describe", "name": name})

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


async def _serve_stdio() -> None:
    hub = _Hub()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                req = json.loads(line)
                op = req.get("op")
                if op == "add":
                    port = await hub.add(req["name"], req["host"], int(req["port"]), int(req.get("listen", 0)))
                    result: dict[str, Any] = {"port": port}
                elif op == "mode":
                    result = await hub.set_mode(req["name"], req["mode"], float(req.get("latency_ms", 0)))
                elif op == "describe":
                    result = hub.describe(req["name"])
                else:
                    raise ProxyError(f"unknown op {op!r}")
                reply: dict[str, Any] = {"result": result}
            except (ProxyError, KeyError, ValueError, TypeError) as e:
                reply = {"error": str(e)}
            out.write((json.dumps(reply) + "\n").encode())
            out.flush()
    finally:
        await hub.close()


def main() -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_stdio())
    return 0


if __name__ == "__main__":
    sys.exit(main())
