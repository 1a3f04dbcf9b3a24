"""An embedded MQTT 3.1.1 broker for laptops without Mosquitto, built on ``amqtt`` and run in-process.

amqtt is asyncio-only; ``EmbeddedBroker`` runs it on its own event loop in a daemon thread so that
synchronous code (the coordinator, tests, ``edgefl broker``) can start and stop it like any other
resource. Access is anonymous and no $SYS or packet-logging plugins are loaded. amqtt is imported
only when a broker starts, so this module imports without the ``broker`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import socket
import struct
import threading
import time
from typing import Any

from coordinator.errors import CoordinatorError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1883
INSTALL_HINT = 'pip install "edgefl[broker]"'

_ANONYMOUS_AUTH = "amqtt.plugins.authentication.AnonymousAuthPlugin"
_CONNACK_ACCEPTED = b"\x20\x02\x00\x00"  # CONNACK, remaining length 2, no session present, return code 0
_DISCONNECT = b"\xe0\x00"
_SHUTDOWN_GRACE_S = 0.25
_WILDCARD_HOSTS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # bind-all address -> one to probe


class BrokerError(CoordinatorError):
    """The embedded broker cannot run: amqtt is missing, the port is taken, or it did not start or stop in time."""

    def __init__(self, problem: str, address: str | None = None) -> None:
        super().__init__(f"{address}: {problem}" if address else problem)
        self.address = address
        self.problem = problem


class EmbeddedBroker:
    """An amqtt broker on its own event loop and thread. Use as a context manager, or ``start`` and ``stop``.

    ``port=0`` picks a free port when the broker is built, so ``url`` is known before ``start``.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        if not 0 <= port <= 65535:
            raise BrokerError(f"port must be in 0..65535, got {port}")
        self.host = host
        self.port = port or free_port(host)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 10.0) -> None:
        """Start listening; return once an MQTT client can connect, or raise ``BrokerError``."""
        if self._thread is not None:
            raise BrokerError("already started", self.url)
        broker_class = _import_amqtt_broker()
        _check_port_free(self.host, self.port)
        deadline = time.monotonic() + timeout_s
        ready = threading.Event()
        self._failure = None
        self._thread = threading.Thread(target=self._run, args=(broker_class, ready), daemon=True,
                                        name=f"edgefl-broker-{self.port}")
        self._thread.start()
        if not ready.wait(timeout_s):
            self.stop()
            raise BrokerError(f"amqtt did not start within {timeout_s:g} s", self.url)
        if self._failure is not None:
            failure, self._failure = self._failure, None
            self._join(timeout_s)
            raise BrokerError(f"amqtt failed to start: {failure}", self.url) from failure
        try:
            _probe(_probe_host(self.host), self.port, deadline)
        except BrokerError:
            self.stop()
            raise
        log.info("embedded MQTT broker listening on %s", self.url)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Disconnect every client and close the listener; a no-op when not running."""
        if self._thread is None:
            return
        loop, stop_requested = self._loop, self._stop_requested
        if loop is not None and stop_requested is not None:
            with contextlib.suppress(RuntimeError):  # the loop already finished (amqtt failed to start)
                loop.call_soon_threadsafe(stop_requested.set)
        self._join(timeout_s)
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise BrokerError(f"amqtt failed while shutting down: {failure}", self.url) from failure
        log.info("embedded MQTT broker on %s stopped", self.url)

    def _join(self, timeout_s: float) -> None:
        thread = self._thread
        if thread is None:
            return
        thread.join(timeout_s)
        if thread.is_alive():
            raise BrokerError(f"amqtt did not shut down within {timeout_s:g} s", self.url)
        self._thread = self._loop = self._stop_requested = None

    def _run(self, broker_class: Any, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(broker_class, ready))
        except Exception as exc:  # handed to the thread that calls stop(), which raises it as a BrokerError
            self._failure = exc
        finally:
            ready.set()

    async def _serve(self, broker_class: Any, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        broker = broker_class(_amqtt_config(self.host, self.port))
        await broker.start()
        ready.set()
        try:
            await self._stop_requested.wait()
        finally:
            await _shutdown(broker)


async def _shutdown(broker: Any) -> None:
    """``broker.shutdown()``, re-delivering cancellations that asyncio lost on the way.

    amqtt stops each client's reader task by cancelling it and waiting until it ends. On Python < 3.12,
    ``asyncio.wait_for`` swallows a cancellation that arrives together with a packet (CPython gh-86296), e.g.
    the PUBACK of a message just delivered; the reader then runs on and the shutdown waits forever. A task
    still marked as cancelling after a grace period has lost its cancellation, so it is cancelled again.
    """
    shutdown = asyncio.ensure_future(broker.shutdown())
    while not (await asyncio.wait([shutdown], timeout=_SHUTDOWN_GRACE_S))[0]:
        for task in asyncio.all_tasks():
            if not task.done() and task is not shutdown and getattr(task, "cancelling", lambda: 0)() > 0:
                log.debug("re-cancelling %s, which ignored a cancellation", task.get_name())
                task.cancel()
    shutdown.result()


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nothing listens on at ``host`` right now (the OS's pick; another process may take it later)."""
    family, kind, proto, _name, address = _resolve(host, 0)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.bind(address)
        port: int = sock.getsockname()[1]
    return port


def _import_amqtt_broker() -> Any:
    try:
        from amqtt.broker import Broker
    except ImportError as exc:
        raise BrokerError(f"the embedded broker needs the amqtt package ({exc}); {INSTALL_HINT}") from exc
    return Broker


def _amqtt_config(host: str, port: int) -> dict[str, Any]:
    bind_host = f"[{host}]" if ":" in host else host
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{bind_host}:{port}"}},
        # An explicit plugin list replaces amqtt's defaults ($SYS topics, event and packet loggers).
        "plugins": {_ANONYMOUS_AUTH: {"allow_anonymous": True}},
    }


def _resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    try:
        return list(socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE))
    except socket.gaierror as exc:
        raise BrokerError(f"cannot resolve host {host!r}: {exc}") from exc


def _check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` the way asyncio will, so a taken port fails here with a clear message."""
    for family, kind, proto, _name, address in _resolve(host, port):
        with socket.socket(family, kind, proto) as sock:
            if os.name == "posix":  # as asyncio does: a port in TIME_WAIT is free, one with a listener is not
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPV6_V6ONLY"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise BrokerError(f"port {port} is already in use (is another MQTT broker running?); "
                                      "stop it or choose another port", f"{host}:{port}") from exc
                raise BrokerError(f"cannot listen on port {port}: {exc.strerror or exc}", f"{host}:{port}") from exc


def _probe_host(host: str) -> str:
    return _WILDCARD_HOSTS.get(host, host)


def _connect_packet(client_id: bytes) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session and no keep-alive."""
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + struct.pack("!H", len(client_id)) + client_id
    assert len(body) < 128, "one-byte remaining length"
    return bytes([0x10, len(body)]) + body


def _probe(host: str, port: int, deadline: float) -> None:
    """Connect as an MQTT client and disconnect cleanly (a bare TCP probe makes amqtt log an error)."""
    client_id = f"edgefl-broker-probe-{secrets.token_hex(4)}".encode()
    last_error: OSError | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic())) as sock:
                sock.sendall(_connect_packet(client_id))
                reply = _recv_exactly(sock, len(_CONNACK_ACCEPTED))
                sock.sendall(_DISCONNECT)
            if reply != _CONNACK_ACCEPTED:
                raise BrokerError(f"answered an MQTT CONNECT with {reply.hex()}, expected "
                                  f"{_CONNACK_ACCEPTED.hex()}", f"{host}:{port}")
            return
        except OSError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise BrokerError(f"accepts no MQTT connection: {last_error}", f"{host}:{port}")
        time.sleep(0.05)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data
