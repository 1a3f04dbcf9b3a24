"""``edgefl broker-config``: write a ready Mosquitto configuration and every client's credentials file."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path
from typing import Any

from coordinator.broker_cli import port_number
from coordinator.broker_config import DEFAULT_DEVICE_CA, BrokerConfigError, BrokerPlan, TlsFiles, write_config
from edge_runtime.argtypes import positive_float, positive_int


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "broker-config", help="write a Mosquitto configuration, password file, ACL and credentials for a federation",
        description="Write into --out a Mosquitto configuration for one federation: a listener (with --tls: a new CA "
                    "and server certificate, or the given files), a hashed password file, the ACL of "
                    "docs/PROTOCOL.md section 2.2, and one credentials file per device and one for the coordinator "
                    "(environment files for systemd's EnvironmentFile=). `mosquitto -c OUT/mosquitto.conf` starts "
                    "the broker as generated.")
    p.add_argument("--federation", required=True, help="federation name (the topic prefix edgefl/NAME/)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--devices", help="device ids, comma-separated (each is also the device's MQTT username)")
    who.add_argument("--count", type=positive_int, help="this many devices, named PREFIX01, PREFIX02, ...")
    p.add_argument("--prefix", default="device-", help="device id prefix with --count (%(default)s)")
    p.add_argument("--port", type=port_number, help="listener port (default 1883; 8883 with TLS)")
    p.add_argument("--bind", help="address to listen on (default: every interface)")
    p.add_argument("--host", action="append", dest="hosts", metavar="NAME",
                   help="a name or address devices reach the broker by, repeatable: in the server certificate and "
                        "the broker URL of the credentials files (default: this machine's host name)")
    tls = p.add_argument_group("TLS")
    tls.add_argument("--tls", action="store_true", help="a TLS listener with a new CA and server certificate")
    tls.add_argument("--tls-cert", type=Path, help="use this server certificate (PEM) instead (implies --tls)")
    tls.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    tls.add_argument("--tls-ca", type=Path, help="the CA that signed it, given to devices")
    tls.add_argument("--device-ca-path", type=Path, default=DEFAULT_DEVICE_CA,
                     help="where devices keep the CA certificate, named in their credentials files (%(default)s)")
    p.add_argument("--max-message-mb", type=positive_float, default=64,
                   help="largest message the broker accepts, MiB: the artifact bundle must fit (%(default)s)")
    p.add_argument("--out", type=Path, required=True, help="folder to write into")
    p.add_argument("--force", action="store_true", help="replace an earlier configuration in --out (new passwords)")
    p.set_defaults(handler=run)


def build_plan(args: argparse.Namespace) -> BrokerPlan:
    if args.devices is not None:
        devices = tuple(d.strip() for d in args.devices.split(",") if d.strip())
    else:
        width = len(str(args.count))
        devices = tuple(f"{args.prefix}{i:0{width}d}" for i in range(1, args.count + 1))
    tls: TlsFiles | str | None = None
    given = (args.tls_cert, args.tls_key, args.tls_ca)
    if any(given):
        if not all(given):
            raise BrokerConfigError("--tls-cert, --tls-key and --tls-ca go together")
        tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)
    elif args.tls:
        tls = "generate"
    return BrokerPlan(args.federation, devices, port=args.port or (8883 if tls else 1883), bind=args.bind, tls=tls,
                      hosts=tuple(args.hosts or [socket.gethostname()]),
                      max_message_bytes=int(args.max_message_mb * 1024 * 1024), device_ca=args.device_ca_path)


def run(args: argparse.Namespace) -> int:
    plan = build_plan(args)
    files = write_config(plan, args.out, force=args.force)
    print(f"wrote a Mosquitto configuration for federation {plan.federation!r}, {len(plan.devices)} devices, "
          f"broker {plan.broker_url}, into {files.folder}:")
    print(f"  {files.conf.name}, {files.passwords.name}, {files.acl.name}"
          + (", ca.crt, ca.key, server.crt, server.key" if plan.tls == "generate" else ""))
    print("  credentials/coordinator.env and credentials/ID.env for each device (mode 600)")
    print(f"start the broker:  mosquitto -c {files.conf}")
    if files.ca is not None:
        print(f"on each device:    {files.ca} -> {plan.device_ca}, credentials/ID.env -> /etc/edgefl/device.env")
    else:
        print("on each device:    credentials/ID.env -> /etc/edgefl/device.env")
    return 0
