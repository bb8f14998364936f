"""Small real servers on 127.0.0.1 threads that misbehave on purpose, for the fault matrix.

A :class:`FaultServer` reads each whole request (headers and body), records it, then lets the
next behaviour of its script answer: a clean answer, a dropped connection, a truncated body, a
TLS alert, a hang. A :class:`RecordingProxy` records what passes through it (``CONNECT`` tunnels
and absolute-form requests). A self-signed certificate for 127.0.0.1 is made with ``cryptography``.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Received:
    """One whole request a server read.

    :param method: the request method.
    :param target: the request target as sent (a path, an absolute URL, or ``host:port``).
    :param headers: the headers, names lower-cased.
    :param body: the body bytes.
    """

    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        """The path and query of the target."""
        if "://" in self.target:
            rest = self.target.split("://", 1)[1]
            return "/" + rest.partition("/")[2]
        return self.target

    @property
    def raw(self) -> str:
        """Everything the request carried, as text, to search for a secret."""
        head = "\n".join(f"{name}: {value}" for name, value in self.headers.items())
        return f"{self.method} {self.target}\n{head}\n\n" + self.body.decode("utf-8", "replace")


# A behaviour answers one request on its connection; it returns whether the connection stays open.
Behaviour = Callable[[socket.socket, Received], bool]


def answer(status: int, body: bytes | str | Any = b"", headers: dict[str, str] | None = None) -> Behaviour:
    """A complete answer with its Content-Length; the connection is kept alive.

    :param status: the status.
    :param body: bytes or text as they are, anything else as JSON.
    :param headers: more headers.
    """
    if isinstance(body, str):
        raw = body.encode()
    elif isinstance(body, bytes):
        raw = body
    else:
        raw = json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}

    def behave(connection: socket.socket, request: Received) -> bool:
        head = f"HTTP/1.1 {status} Status\r\n" + "".join(f"{k}: {v}\r\n" for k, v in all_headers.items())
        connection.sendall(f"{head}Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
        return True

    # A 429 or 503 refuses the request unprocessed; every other behaviour may have processed it.
    behave.refuses = status in (429, 503)  # type: ignore[attr-defined]
    return behave


def drop(connection: socket.socket, request: Received) -> bool:
    """Close the connection without a byte of answer."""
    return False


def tls_alert(connection: socket.socket, request: Received) -> bool:
    """Write a fatal TLS alert record in the clear over the TLS session, then close: the client's
    TLS layer fails after its request was sent."""
    raw = socket.socket(fileno=os.dup(connection.fileno()))
    try:
        raw.sendall(b"\x15\x03\x03\x00\x02\x02\x50")
    finally:
        raw.close()
    return False


def chunked_cut(connection: socket.socket, request: Received) -> bool:
    """Start a chunked answer, send half a chunk, close."""
    connection.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'20\r\n{"success": true, "i'
    )
    return False


def short_body(connection: socket.socket, request: Received) -> bool:
    """Promise more body than is sent, then close."""
    connection.sendall(
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{"success": true'
    )
    return False


def hang_for(seconds: float) -> Behaviour:
    """Read the request, then answer nothing for ``seconds`` (longer than the client's read timeout)."""

    def behave(connection: socket.socket, request: Received) -> bool:
        threading.Event().wait(seconds)
        return False

    return behave


def _read_request(stream: Any) -> Received | None:
    line = stream.readline(65537)
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        header = stream.readline(65537).decode("latin-1")
        if header in ("\r\n", "\n", ""):
            break
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = stream.read(length) if length else b""
    return Received(method, target, headers, body)


class _ThreadedServer:
    """Accepts connections on 127.0.0.1 and serves each on its own daemon thread."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(1.0)
        self.port = self._listener.getsockname()[1]
        self._tls = tls
        self._stopping = threading.Event()
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def base_url(self) -> str:
        """``http(s)://127.0.0.1:PORT``."""
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> _ThreadedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        # Shutting the listener down wakes the accept loop at once, instead of at its timeout.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._thread.join(2)
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._connections.append(connection)
            threading.Thread(target=self._serve_safely, args=(connection,), daemon=True).start()

    def _serve_safely(self, connection: socket.socket) -> None:
        try:
            connection.settimeout(5)
            if self._tls is not None:
                connection = self._tls.wrap_socket(connection, server_side=True)
                with self._lock:
                    self._connections.append(connection)
            self.serve(connection)
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                connection.close()

    def serve(self, connection: socket.socket) -> None:
        raise NotImplementedError


class FaultServer(_ThreadedServer):
    """Answers each request with the next behaviour of its script (the last one repeats).

    :param script: the behaviours in order, or a function choosing one for each request.
    :param tls: serve TLS with this context.
    """

    def __init__(
        self,
        script: Sequence[Behaviour] | Callable[[Received], Behaviour],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(tls)
        self.script = script
        self.received: list[Received] = []
        self.processed = 0

    def reset(self) -> None:
        """Forget what was received and start the script again."""
        with self._lock:
            self.received = []
            self.processed = 0

    def serve(self, connection: socket.socket) -> None:
        stream = connection.makefile("rb")
        while not self._stopping.is_set():
            request = _read_request(stream)
            if request is None:
                return
            with self._lock:
                self.received.append(request)
                index = len(self.received) - 1
            if callable(self.script):
                behaviour = self.script(request)
            else:
                behaviour = self.script[min(index, len(self.script) - 1)]
            if not getattr(behaviour, "refuses", False):
                # As a real server would have: stored it, whatever the answer then is.
                with self._lock:
                    self.processed += 1
            if not behaviour(connection, request):
                return

    def __enter__(self) -> FaultServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RecordingProxy(_ThreadedServer):
    """A proxy that records each request: it tunnels ``CONNECT`` to its target, and answers an
    absolute-form (plain HTTP) request by relaying it to its target over a new connection."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Received] = []

    def serve(self, connection: socket.socket) -> None:
        stream = connection.makefile("rb")
        request = _read_request(stream)
        if request is None:
            return
        with self._lock:
            self.received.append(request)
        if request.method == "CONNECT":
            host, _, port = request.target.rpartition(":")
            upstream = socket.create_connection((host, int(port)), timeout=5)
            connection.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pipe(connection, upstream)
            return
        netloc = request.target.split("://", 1)[1].partition("/")[0]
        host, _, port = netloc.rpartition(":")
        upstream = socket.create_connection((host, int(port)), timeout=5)
        headers = {**request.headers, "connection": "close"}
        head = f"{request.method} {request.path} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items() if k != "proxy-connection"
        )
        upstream.sendall(head.encode("latin-1") + b"\r\n" + request.body)
        while chunk := upstream.recv(65536):
            connection.sendall(chunk)
        upstream.close()

    @staticmethod
    def _pipe(client: socket.socket, upstream: socket.socket) -> None:
        # A client sends nothing after CONNECT before the 200, so nothing waits in a read buffer.
        def forward(source: socket.socket, target: socket.socket) -> None:
            try:
                while chunk := source.recv(65536):
                    target.sendall(chunk)
            except OSError:
                pass
            finally:
                for end in (source, target):
                    with contextlib.suppress(OSError):
                        end.shutdown(socket.SHUT_RDWR)

        back = threading.Thread(target=forward, args=(upstream, client), daemon=True)
        back.start()
        forward(client, upstream)
        back.join(5)
        upstream.close()

    def __enter__(self) -> RecordingProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, and a server context serving it.

    :param cert_path: the PEM certificate, also the CA bundle that trusts it.
    :param key_path: the PEM private key.
    """

    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context serving this certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


def make_certificate(directory: Path) -> Certificate:
    """Write a self-signed certificate valid for 127.0.0.1 and localhost into ``directory``.

    :param directory: where to write ``cert.pem`` and ``key.pem``.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Certificate(cert_path, key_path)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
