"""A thin MQTT connection shared by the device agent and the coordinator.

paho-mqtt runs the network loop in a background thread and reconnects with
backoff; on every (re)connect this module re-subscribes and calls the owner's
``on_connect`` so it can republish what the broker may have lost. MQTT v5 is
tried first; a broker that answers "unsupported protocol version", or
accepts the TCP connection but never answers the v5 CONNECT (amqtt speaks
only 3.1.1, and a v5 CONNECT carrying a will leaves it waiting for bytes
that never come), is used with 3.1.1, since the protocol relies on nothing
v5-only.

A first connection that fails raises ``ConnectFailure`` naming its cause
(refused, unresolvable host, TLS, authentication, ...) as soon as it is known
(``edge_runtime.connect_errors``). With ``MqttOptions.retry`` the first connection is retried with
jittered exponential backoff instead (``Backoff``).
"""

from __future__ import annotations

__all__ = ["Backoff", "BrokerUrl", "ConnectCancelled", "ConnectFailure", "FailureCause", "MqttConnection",
           "MqttOptions", "ProtocolChoice", "TransportError"]

import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from edge_runtime.connect_errors import (
    ConnectCancelled,
    ConnectFailure,
    FailureCause,
    TransportError,
    diagnose,
    refusal_failure,
    tls_context,
)

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]
ProtocolChoice = Literal["auto", "5", "3.1.1"]
# paho return codes of a publish made while the link is down (no connection / connection lost): QoS 1
# messages stay queued and go out after the reconnect.
_QUEUED_FOR_RECONNECT = (4, 7)
V5_PROBE_S = 3.0  # in "auto", how long a reachable broker may leave a v5 CONNECT unanswered


@dataclass(frozen=True)
class BrokerUrl:
    """``mqtt://HOST[:PORT]`` (plain, default port 1883) or ``mqtts://HOST[:PORT]`` (TLS, 8883)."""

    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, text: str) -> BrokerUrl:
        parts = urlsplit(text if "://" in text else f"mqtt://{text}")
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path not in ("", "/"):
            raise TransportError(f"broker URL {text!r} is not valid; expected mqtt://HOST[:PORT] or "
                                 "mqtts://HOST[:PORT]")
        try:
            port = parts.port
        except ValueError as exc:
            raise TransportError(f"broker URL {text!r} has a bad port: {exc}") from exc
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname, port or (8883 if tls else 1883), tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts at a first connection: doubling from ``first_s`` up to ``max_s``, each wait shortened
    by a random part of up to ``jitter`` of it, so that a fleet restarted together does not retry in step.

    ``give_up_after_s``: raise the last failure once this long has passed (None: retry until ``stop`` is set).
    """

    first_s: float = 1.0
    max_s: float = 60.0
    jitter: float = 0.5
    give_up_after_s: float | None = None
    stop: threading.Event | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name, ok, expected in (("first_s", self.first_s > 0, "> 0"),
                                   ("max_s", self.max_s >= self.first_s, f">= first_s ({self.first_s})"),
                                   ("jitter", 0 <= self.jitter <= 1, "in 0..1"),
                                   ("give_up_after_s", self.give_up_after_s is None or self.give_up_after_s > 0,
                                    "> 0 or None")):
            if not ok:
                raise ValueError(f"Backoff.{name} must be {expected}, got {getattr(self, name)!r}")

    def delay(self, attempt: int, draw: float) -> float:
        """The wait after failed attempt ``attempt`` (0: the first), ``draw`` uniform in [0, 1)."""
        return min(self.max_s, self.first_s * 2.0 ** min(attempt, 60)) * (1.0 - self.jitter * draw)


@dataclass(frozen=True)
class MqttOptions:
    broker: BrokerUrl
    client_id: str
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    keepalive_s: int = 30
    protocol: ProtocolChoice = "auto"
    retry: Backoff | None = None  # None: a failed first connection raises at once

    @property
    def tls(self) -> bool:
        return self.broker.tls or self.tls_ca is not None


class MqttConnection:
    """One client connection. Use as a context manager, or call ``start`` and ``close``."""

    def __init__(self, options: MqttOptions, subscriptions: Sequence[tuple[str, int]], on_message: MessageHandler,
                 on_connect: Callable[[], None] | None = None, will: tuple[str, bytes] | None = None) -> None:
        self.options = options
        self._subscriptions = dict(subscriptions)  # topic filter -> QoS, re-subscribed on every connect
        self._subscribing: dict[int, tuple[str, ...]] = {}  # mid of a SUBSCRIBE awaiting its SUBACK -> its filters
        self._connect_mid: int | None = None  # the SUBSCRIBE of the current connection's first subscriptions
        # Filters the broker accepted at its last SUBACK for them; kept across a reconnect until the new SUBACK says
        # otherwise, so a device does not take a broker that has not answered yet for one that refused.
        self._granted: set[str] = set()
        self._live = False  # the current connection has been sent the subscriptions (later ones go out at once)
        self._subscriptions_lock = threading.Lock()  # the owner's thread changes them, paho's renews them
        self._on_message = on_message
        self._on_connect = on_connect
        self._will = will
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker acknowledged this connection's subscriptions
        self._refusal: tuple[int, str] | None = None  # CONNACK code and reason of a refused first connection
        self._ever_connected = False
        self._closing = False
        self._unreachable = False  # the last TCP connection attempt failed
        self._dropped = False  # the broker closed the first connection before its CONNACK
        self._pending: deque[Any] = deque()  # paho MessageInfo of publishes, oldest first, pruned as acknowledged
        self._pending_lock = threading.Lock()
        self._protocol: Literal["5", "3.1.1"] = "3.1.1" if options.protocol == "3.1.1" else "5"
        self._client: Any = None

    @property
    def protocol(self) -> str:
        return self._protocol

    @property
    def subscriptions(self) -> tuple[tuple[str, int], ...]:
        """``(topic filter, QoS)`` of every subscription, made again after every (re)connect."""
        with self._subscriptions_lock:
            return tuple(self._subscriptions.items())

    def granted(self, topic: str) -> bool:
        """Whether the broker accepted the subscription to ``topic`` the last time it answered for it."""
        with self._subscriptions_lock:
            return topic in self._granted

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe to ``topic`` now if connected, and after every reconnect (the broker sends its retained
        message)."""
        with self._subscriptions_lock:
            if topic in self._subscriptions:
                return
            self._subscriptions[topic] = qos
            if self._live:
                self._send_subscribe(self._client, [(topic, qos)])

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``, now and after reconnects."""
        with self._subscriptions_lock:
            if self._subscriptions.pop(topic, None) is None:
                return
            self._granted.discard(topic)
            if self._live:
                self._client.unsubscribe(topic)

    def __enter__(self) -> MqttConnection:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout_s: float = 30.0) -> None:
        """Connect, waiting up to ``timeout_s`` for the first CONNACK; afterwards reconnects are automatic.

        Raises ``ConnectFailure`` naming the cause; with ``options.retry``, only once it gives up.
        """
        retry = self.options.retry
        if retry is None:
            self._attempt(timeout_s)
            return
        started, draws = time.monotonic(), random.Random()
        for attempt in itertools.count():
            remaining = (retry.give_up_after_s - (time.monotonic() - started)
                         if retry.give_up_after_s is not None else timeout_s)
            try:
                self._attempt(max(1.0, min(timeout_s, remaining)))
                return
            except ConnectFailure as exc:
                delay = retry.delay(attempt, draws.random())
                elapsed = time.monotonic() - started
                if retry.give_up_after_s is not None and elapsed + delay > retry.give_up_after_s:
                    raise ConnectFailure(exc.broker, exc.cause, f"{exc.detail} (gave up after {attempt + 1} "
                                                                f"attempts in {elapsed:.0f} s)") from exc
                log.warning("%s; retrying in %.0f s", exc, delay)
            if retry.stop is None:
                time.sleep(delay)
            elif retry.stop.wait(delay):
                raise ConnectCancelled(f"stopped while waiting to connect to {self.options.broker}")

    def _attempt(self, timeout_s: float) -> None:
        """One connection, with the v5 probe and 3.1.1 fall-back of ``auto``; raises ``ConnectFailure``."""
        started = time.monotonic()
        auto = self.options.protocol == "auto"
        self._open("3.1.1" if self.options.protocol == "3.1.1" else "5")
        failure = self._await_connack(min(V5_PROBE_S, timeout_s) if auto else timeout_s)
        if failure is not None and auto and failure.cause in (FailureCause.PROTOCOL, FailureCause.SILENT,
                                                              FailureCause.CLOSED):
            log.info("%s does not answer MQTT v5 (%s); using 3.1.1", self.options.broker, failure.detail)
            self._stop_client()
            self._open("3.1.1")
            failure = self._await_connack(max(timeout_s - (time.monotonic() - started), 1.0))
        if failure is not None:
            self.close()
            raise failure

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> None:
        """Queue a publish; paho delivers QoS 1 messages after a reconnect if the link is down now."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != 0 and info.rc not in _QUEUED_FOR_RECONNECT:
            raise TransportError(f"publish to {topic} failed with paho error code {info.rc}")
        with self._pending_lock:
            while self._pending and _settled(self._pending[0]):
                self._pending.popleft()
            self._pending.append(info)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every publish so far reached the broker (QoS 1: acknowledged); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._pending_lock:
            pending, self._pending = list(self._pending), deque()
        for info in pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.connected.is_set():
                return False
            try:
                info.wait_for_publish(remaining)
            except (RuntimeError, ValueError):
                return False
        return all(_settled(info) for info in pending)

    def close(self, flush_timeout_s: float = 10.0) -> None:
        """Disconnect, after waiting up to ``flush_timeout_s`` for queued publishes to reach the broker."""
        if self._client is not None:
            if self.connected.is_set() and not self.flush(flush_timeout_s):
                log.warning("closing with publishes the broker has not acknowledged")
            self._closing = True
            self._client.disconnect()
            self._stop_client()

    # -- paho plumbing -------------------------------------------------------------------------

    def _open(self, protocol: Literal["5", "3.1.1"]) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        opts = self.options
        with self._subscriptions_lock:
            self._live = False
        self._protocol, self._refusal, self._unreachable, self._dropped, self._closing = protocol, None, False, \
            False, False
        version = paho.MQTTv5 if protocol == "5" else paho.MQTTv311
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=opts.client_id, protocol=version)
        if opts.username is not None:
            client.username_pw_set(opts.username, opts.password)
        if opts.tls:
            client.tls_set_context(tls_context(opts))
        if self._will is not None:
            client.will_set(self._will[0], self._will[1], qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_queued_messages_set(0)  # no cap: a round publishes one task per selected device at once
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_connect_fail = self._handle_connect_fail
        client.on_message = self._handle_message
        client.on_subscribe = self._handle_subscribe
        self._client = client
        try:
            client.connect_async(opts.broker.host, opts.broker.port, keepalive=opts.keepalive_s)
        except (OSError, ValueError) as exc:
            raise ConnectFailure(opts.broker, FailureCause.UNREACHABLE, f"cannot connect: {exc}") from exc
        client.loop_start()

    def _stop_client(self) -> None:
        self._client.loop_stop()
        self.connected.clear()

    def _await_connack(self, timeout_s: float) -> ConnectFailure | None:
        """None once connected; else the failure, as soon as its cause is known, or after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.connected.wait(0.05):
            if self._refusal is not None:
                return refusal_failure(self.options.broker, *self._refusal)
            if self._dropped:
                return ConnectFailure(self.options.broker, FailureCause.CLOSED,
                                      "the broker closed the connection before answering the MQTT CONNECT"
                                      + ("" if self.options.tls else "; is it a TLS port (use mqtts://)?"))
            if self._unreachable:
                failure = diagnose(self.options)
                if failure is not None:
                    return failure
                self._unreachable = False  # reachable now (a broker just started): paho's next attempt may do
            if time.monotonic() >= deadline:
                return ConnectFailure(self.options.broker, FailureCause.SILENT,
                                      f"no answer to the MQTT {self._protocol} CONNECT within {timeout_s:.0f} s; "
                                      "is this an MQTT broker's port?")
        return None

    def _handle_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        code = getattr(reason, "value", reason)
        if code != 0:
            self._refusal = (code, str(reason))
            if not self._ever_connected:
                client.disconnect()  # a refusal at start-up is final; start() reports it
            return
        self._unreachable = False
        with self._subscriptions_lock:
            self._subscribing.clear()
            self._connect_mid = self._send_subscribe(client, list(self._subscriptions.items()))
            self._live = True
        if self._connect_mid is None:
            self.subscribed.set()
        self.connected.set()
        self._ever_connected = True
        log.info("connected to %s as %s (MQTT %s)", self.options.broker, self.options.client_id, self._protocol)
        if self._on_connect is not None:
            self._on_connect()

    def _send_subscribe(self, client: Any, topics: list[tuple[str, int]]) -> int | None:
        """SUBSCRIBE to ``topics`` (with the subscriptions' lock held); its mid, None if there is nothing to send."""
        if not topics:
            return None
        _rc, mid = client.subscribe(topics)
        if mid is not None:
            self._subscribing[mid] = tuple(topic for topic, _qos in topics)
        return mid  # type: ignore[no-any-return]

    def _handle_subscribe(self, client: Any, userdata: Any, mid: Any, reasons: Any, properties: Any) -> None:
        with self._subscriptions_lock:
            topics = self._subscribing.pop(mid, ())
            verdicts = list(zip(topics, reasons, strict=False))
            for topic, reason in verdicts:
                (self._granted.add if getattr(reason, "value", reason) < 0x80 else self._granted.discard)(topic)
            first = mid == self._connect_mid
        refused = [topic for topic, reason in verdicts if getattr(reason, "value", reason) >= 0x80]
        if refused:  # the broker's ACL said no: nothing will arrive on these
            log.error("%s refused the subscriptions %s of %s; check the broker's ACL", self.options.broker,
                      ", ".join(refused), self.options.client_id)
            return
        if first:
            self.subscribed.set()

    def _handle_connect_fail(self, client: Any, userdata: Any) -> None:
        self._unreachable = True

    def _handle_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not self._ever_connected and not self._closing and self._refusal is None:
            self._dropped = True
        if self.connected.is_set() and not self._closing:
            log.warning("lost the connection to %s (%s); reconnecting", self.options.broker, reason)
        self.connected.clear()
        self.subscribed.clear()
        with self._subscriptions_lock:
            self._live = False

    def _handle_message(self, client: Any, userdata: Any, message: Any) -> None:
        self._on_message(message.topic, bytes(message.payload))


def _settled(info: Any) -> bool:
    """Whether a publish needs no more waiting: acknowledged, or failed for good (paho raises then)."""
    try:
        return bool(info.is_published())
    except (RuntimeError, ValueError):
        return True
