"""Why a connection to the broker failed, named: the errors and the diagnosis behind them.

paho reports a failed first connection without its cause. ``diagnose``
repeats the steps (name lookup, TCP, TLS handshake) with plain sockets, which
keep the error, so the failure names what to fix: an unresolvable host, a
refused port, an unknown CA, a host-name mismatch, an expired certificate,
bad credentials.
"""

from __future__ import annotations

import enum
import socket
import ssl
from typing import TYPE_CHECKING

from edge_runtime.errors import EdgeRuntimeError

if TYPE_CHECKING:
    from edge_runtime.mqtt import BrokerUrl, MqttOptions

UNSUPPORTED_PROTOCOL = 132  # CONNACK reason code (v5); paho maps the 3.1.1 refusal to it too
_BAD_CREDENTIALS = (134, 135)  # v5 "bad user name or password", "not authorized"; paho maps 3.1.1's 4 and 5 to them
DIAGNOSE_TIMEOUT_S = 3.0  # each step of ``diagnose``: TCP connect, TLS handshake
# OpenSSL verify codes (X509_V_ERR_*) of a certificate that no CA the client trusts has signed, and of a name mismatch
_UNKNOWN_CA = (2, 18, 19, 20, 21)
_NAME_MISMATCH = (62, 64)
_EXPIRED, _NOT_YET_VALID = 10, 9


class TransportError(EdgeRuntimeError):
    """The broker could not be reached, refused the connection, or a publish failed."""


class FailureCause(enum.Enum):
    """Why a first connection failed, as ``ConnectFailure.cause``."""

    UNRESOLVABLE = "unresolvable host"
    REFUSED = "connection refused"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timed out"
    TLS = "TLS"
    AUTHENTICATION = "authentication"
    REJECTED = "rejected"  # a CONNACK refusal other than credentials or protocol
    PROTOCOL = "MQTT version"
    CLOSED = "closed"  # the broker closed the connection before answering CONNECT
    SILENT = "no answer"  # TCP (and TLS) fine, no CONNACK


class ConnectFailure(TransportError):
    """A connection attempt failed; ``cause`` says why, ``detail`` what to check."""

    def __init__(self, broker: BrokerUrl, cause: FailureCause, detail: str) -> None:
        super().__init__(f"{broker}: {detail}")
        self.broker = broker
        self.cause = cause
        self.detail = detail


class ConnectCancelled(TransportError):
    """``Backoff.stop`` was set while waiting to retry a first connection."""


def tls_context(options: MqttOptions) -> ssl.SSLContext:
    """The client's TLS settings: ``options.tls_ca`` (else the system's CAs), host names checked."""
    ca = options.tls_ca
    if ca is not None and not ca.is_file():
        raise ConnectFailure(options.broker, FailureCause.TLS, f"the CA certificate file {ca} does not exist")
    try:
        return ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (ssl.SSLError, OSError) as exc:
        raise ConnectFailure(options.broker, FailureCause.TLS, f"cannot load the CA certificate {ca}: {exc}") from exc


def diagnose(options: MqttOptions, timeout_s: float = DIAGNOSE_TIMEOUT_S) -> ConnectFailure | None:
    """Why a connection to the broker fails: name lookup, TCP, TLS in turn; None if all three succeed now."""
    broker = options.broker
    try:
        socket.getaddrinfo(broker.host, broker.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return ConnectFailure(broker, FailureCause.UNRESOLVABLE,
                              f"cannot resolve the host name {broker.host!r} ({exc.strerror}); check the broker URL "
                              "and this machine's DNS")
    try:
        sock = socket.create_connection((broker.host, broker.port), timeout=timeout_s)
    except ConnectionRefusedError:
        return ConnectFailure(broker, FailureCause.REFUSED, f"connection refused: nothing listens on port "
                                                            f"{broker.port}; is the broker running, on this port?")
    except TimeoutError:
        return ConnectFailure(broker, FailureCause.TIMEOUT, f"no answer within {timeout_s:.0f} s; is the address "
                                                            f"right, and does a firewall let port {broker.port} "
                                                            "through?")
    except OSError as exc:
        return ConnectFailure(broker, FailureCause.UNREACHABLE, f"cannot connect: {exc.strerror or exc}")
    with sock:
        return _diagnose_tls(options, sock, timeout_s) if options.tls else None


def _diagnose_tls(options: MqttOptions, sock: socket.socket, timeout_s: float) -> ConnectFailure | None:
    context = tls_context(options)
    sock.settimeout(timeout_s)
    try:
        with context.wrap_socket(sock, server_hostname=options.broker.host):
            return None
    except ssl.SSLCertVerificationError as exc:
        return ConnectFailure(options.broker, FailureCause.TLS, _verify_text(options, exc))
    except (ssl.SSLError, OSError) as exc:
        return ConnectFailure(options.broker, FailureCause.TLS, f"TLS handshake failed ({exc}); is port "
                                                                f"{options.broker.port} a TLS listener?")


def _verify_text(options: MqttOptions, exc: ssl.SSLCertVerificationError) -> str:
    code, message = exc.verify_code, exc.verify_message
    ca = f"the CA in {options.tls_ca}" if options.tls_ca else "the system's CAs (give --tls-ca)"
    if code in _UNKNOWN_CA:
        return f"TLS: unknown CA: the broker's certificate is not signed by {ca} ({message})"
    if code in _NAME_MISMATCH:
        return (f"TLS: host name mismatch: the broker's certificate is not valid for {options.broker.host!r} "
                f"({message}); connect by a name the certificate lists")
    if code == _EXPIRED:
        return f"TLS: the broker's certificate has expired ({message})"
    if code == _NOT_YET_VALID:
        return f"TLS: the broker's certificate is not valid yet; is this machine's clock right? ({message})"
    return f"TLS: the broker's certificate was refused: {message}"


def refusal_failure(broker: BrokerUrl, code: int, reason: str) -> ConnectFailure:
    if code == UNSUPPORTED_PROTOCOL:
        return ConnectFailure(broker, FailureCause.PROTOCOL, f"the broker refused this MQTT version ({reason})")
    if code in _BAD_CREDENTIALS:
        return ConnectFailure(broker, FailureCause.AUTHENTICATION,
                              f"authentication failed: {reason}; check the username and password "
                              "($EDGEFL_MQTT_PASSWORD) against the broker's password file")
    return ConnectFailure(broker, FailureCause.REJECTED, f"the broker refused the connection: {reason}")
