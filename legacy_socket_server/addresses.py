"""Client addresses for per-address limits: normalised, and matched against trusted networks."""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalize(address: str) -> str:
    """``address`` as one client is known by: IPv4-mapped IPv6 (``::ffff:1.2.3.4``) as IPv4.

    A dual-stack listener sees IPv4 clients as mapped IPv6 addresses; counting
    them apart would let one client double its share. Non-IP text (a Unix
    socket, a test) is returned as is.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def client_address(peername: Any) -> str:
    """The normalised address of a transport's ``peername`` ('' when there is none)."""
    if isinstance(peername, tuple) and peername:
        return normalize(str(peername[0]))
    return ""


def parse_networks(value: str) -> tuple[IPNetwork, ...]:
    """Comma-separated addresses or CIDRs (``127.0.0.1,::1,172.28.0.0/24``)."""
    networks = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        host, slash, bits = item.partition("/")
        try:
            networks.append(ipaddress.ip_network(normalize(host) + slash + bits, strict=False))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected addresses or networks like 127.0.0.1,::1,10.0.0.0/8, got {item!r}"
            ) from None
    return tuple(networks)


def is_trusted(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)
