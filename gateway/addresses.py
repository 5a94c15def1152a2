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


# IPv6 forms that are only a wrapper around an IPv4 address: the IPv4 address alone decides.
_WRAPPERS = tuple(ipaddress.ip_network(n) for n in (
    "::ffff:0:0/96",  # IPv4-mapped
    "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
    "::/96",  # IPv4-compatible (deprecated; also holds :: and ::1, which unwrap to 0.0.0.0 and 0.0.0.1)
    "64:ff9b::/96",  # NAT64, the well-known prefix
))
# NAT64 local use (RFC 8215): the operator picks where the IPv4 address sits, so it cannot be read: refused.
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_ISATAP_ID = 0x00005EFE  # the interface identifier's high half, with its u/g bits masked off (RFC 5214)


def public(address: IPAddress) -> bool:
    """Routable on the internet: not private, loopback, link-local (cloud metadata), multicast or reserved, and
    neither is any IPv4 address the IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo, ISATAP)."""
    if isinstance(address, ipaddress.IPv4Address):
        return _public_v4(address)
    if address in _NAT64_LOCAL:
        return False
    for wrapper in _WRAPPERS:
        if address in wrapper:
            return _public_v4(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    carried = _carried_v4(address)
    return address.is_global and not address.is_multicast and all(_public_v4(v4) for v4 in carried)


def _public_v4(address: ipaddress.IPv4Address) -> bool:
    return address.is_global and not address.is_multicast


def _carried_v4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses a tunnelling form routes to: 6to4's, Teredo's server and (de-obfuscated) client, ISATAP's."""
    carried: list[ipaddress.IPv4Address] = []
    if address.sixtofour is not None:
        carried.append(address.sixtofour)
    if address.teredo is not None:
        carried.extend(address.teredo)
    if (int(address) >> 32) & 0xFCFFFFFF == _ISATAP_ID:
        carried.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return carried


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
