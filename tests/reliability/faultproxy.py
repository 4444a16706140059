"""A small fault-injecting HTTP proxy for S3 tests (stdlib only).

It listens on loopback and forwards each request to moto's server. For a seeded random fraction
of the requests it injects a fault instead of (or after) forwarding:

* ``500``        - ``500 InternalError`` (request not forwarded);
* ``503``        - ``503 ServiceUnavailable`` (not forwarded);
* ``slowdown``   - ``503 SlowDown``, S3's throttling answer (not forwarded);
* ``reset``      - the connection is reset (RST) before any answer; half of these are reset
                   *after* moto applied the request, so a PUT may have landed although the
                   client saw an error (the retry must be harmless);
* ``truncate``   - the answer's headers and half of its body are sent, then the connection is
                   reset (only for answers with a body of at least 2 bytes; else ``reset``);

and, independently, a fraction of the requests is delayed (``delay``, 0.2-1.5 s) before the
answer. Counts by kind are in :attr:`FaultProxy.faults`; :attr:`FaultProxy.requests` counts
every request received. ``fault_rate`` can be changed while it runs.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

FAULT_KINDS = ("500", "503", "slowdown", "reset", "truncate")
_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
        "expect", "transfer-encoding"}


def _error_xml(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>faultproxy</RequestId></Error>").encode()


@dataclass
class Request:
    """One request the proxy saw (botocore's retry headers identify attempts of one call)."""

    method: str
    path: str
    invocation: str
    attempt: int
    start: float
    end: float = 0.0
    fault: str | None = None  # what was injected ("delay" alone is not a fault)


class FaultProxy:
    def __init__(self, upstream: str, *, fault_rate: float = 0.2, delay_rate: float = 0.1,
                 seed: int = 0, kinds: tuple[str, ...] = FAULT_KINDS,
                 max_delay_s: float = 1.5) -> None:
        parsed = urlparse(upstream)
        self.upstream_host = parsed.hostname or "127.0.0.1"
        self.upstream_port = parsed.port or 80
        self.fault_rate = fault_rate
        self.delay_rate = delay_rate
        self.kinds = kinds
        self.max_delay_s = max_delay_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.faults: Counter[str] = Counter()
        self.by_method: Counter[str] = Counter()
        self.faulted_by_method: Counter[str] = Counter()
        self.log: list[Request] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="faultproxy",
                                        daemon=True)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def injected(self) -> int:
        """Requests that failed (everything but ``delay``)."""
        return sum(n for k, n in self.faults.items() if k != "delay")

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {self.faults[k]}" for k in (*FAULT_KINDS, "delay")
                          if self.faults[k])
        rate = self.injected / self.requests if self.requests else 0.0
        return f"requests={self.requests} failed={self.injected} ({rate:.1%}) [{kinds}]"

    # -- one request ------------------------------------------------------------------------

    def _decide(self, method: str) -> tuple[str | None, float]:
        with self._lock:
            self.requests += 1
            self.by_method[method] += 1
            fault = self._rng.choice(self.kinds) if self._rng.random() < self.fault_rate \
                else None
            delay = self._rng.uniform(0.2, self.max_delay_s) \
                if self._rng.random() < self.delay_rate else 0.0
            after = self._rng.random() < 0.5  # resets: before or after moto applied it
        if fault == "reset" and after:
            fault = "reset-after"
        return fault, delay

    def _count(self, kind: str, method: str) -> None:
        with self._lock:
            self.faults[kind] += 1
            if kind != "delay":
                self.faulted_by_method[method] += 1

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        sdk = h.headers.get("amz-sdk-request") or ""
        match = re.search(r"attempt=(\d+)", sdk)
        rec = Request(h.command, h.path, h.headers.get("amz-sdk-invocation-id") or "",
                      int(match.group(1)) if match else 0, time.monotonic())
        try:
            rec.fault = self._serve(h)
        finally:
            rec.end = time.monotonic()
            with self._lock:
                self.log.append(rec)

    def _serve(self, h: BaseHTTPRequestHandler) -> str | None:
        method = h.command
        length = int(h.headers.get("Content-Length") or 0)
        if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
            body = _read_chunked(h)
        else:
            body = h.rfile.read(length) if length else b""
        fault, delay = self._decide(method)
        if delay:
            self._count("delay", method)
            time.sleep(delay)
        if fault in ("500", "503", "slowdown"):
            self._count(fault, method)
            status, code, msg = {"500": (500, "InternalError", "We encountered an error"),
                                 "503": (503, "ServiceUnavailable", "Please reduce rate"),
                                 "slowdown": (503, "SlowDown", "Please reduce your request "
                                              "rate.")}[fault]
            payload = b"" if method == "HEAD" else _error_xml(code, msg)
            h.send_response(status)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            if payload:
                h.wfile.write(payload)
            return fault
        if fault == "reset":
            self._count("reset", method)
            _reset(h)
            return "reset"
        try:
            status, headers, data = self._forward(h, method, body)
        except OSError:
            _reset(h)  # upstream trouble looks like a reset to the client
            self._count("upstream-error", method)
            return "upstream-error"
        if fault == "reset-after":
            self._count("reset", method)
            _reset(h)
            return "reset"
        if fault == "truncate" and method != "HEAD" and len(data) >= 2:
            self._count("truncate", method)
            self._send_head(h, status, headers, len(data))
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            _reset(h)
            return "truncate"
        if fault == "truncate":  # nothing to truncate: reset instead
            self._count("reset", method)
            _reset(h)
            return "reset"
        self._send_head(h, status, headers, len(data))
        if method != "HEAD" and data:
            h.wfile.write(data)
        return None

    def _forward(self, h: BaseHTTPRequestHandler, method: str,
                 body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(method, h.path, body=body if body or method in ("PUT", "POST")
                         else None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.getheaders(), data
        finally:
            conn.close()

    @staticmethod
    def _send_head(h: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]],
                   length: int) -> None:
        h.send_response_only(status)
        for k, v in headers:
            if k.lower() not in _HOP and k.lower() != "content-length":
                h.send_header(k, v)
        h.send_header("Content-Length", str(length))
        h.end_headers()


def _read_chunked(h: BaseHTTPRequestHandler) -> bytes:
    out = bytearray()
    while True:
        size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(out)
        out += h.rfile.read(size)
        h.rfile.readline()


def _reset(h: BaseHTTPRequestHandler) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0, then close)."""
    h.close_connection = True
    sock = h.connection
    with contextlib.suppress(OSError):
        h.wfile.flush()
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        h.rfile.close()  # drop the makefile reference so close() really closes
    with contextlib.suppress(OSError):
        sock.close()
