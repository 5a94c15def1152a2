"""Which addresses the gateway may reach on a client's word (an image URL, a webhook): public ones only.

The gateway sits beside the instances, the database and often a cloud's metadata service; a URL a client
gives must not lead there. Every address its name resolves to must be public, and the caller connects to the
address that was checked, so a second DNS answer cannot swap in 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(Exception):
    """The name does not resolve (`unresolved`), or to an address that is not public (`private`)."""

    def __init__(self, reason: str, host: str) -> None:
        super().__init__(f"{reason}: {host}")
        self.reason = reason
        self.host = host


def public(address: IPAddress) -> bool:
    """Routable on the internet: not private, loopback, link-local (cloud metadata), multicast or reserved."""
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address.is_global and not address.is_multicast


async def checked_address(host: str, port: int, *, allow_private: bool = False) -> str:
    """The address to connect to for `host`; AddressRefused when any address it resolves to is not public."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise AddressRefused("unresolved", host) from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not addresses:
        raise AddressRefused("unresolved", host)
    if not allow_private and not all(public(a) for a in addresses):
        raise AddressRefused("private", host)
    return str(addresses[0])


def netloc(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
