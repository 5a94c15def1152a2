"""The egress fence of docker instances: iptables rules on the engine's host that let instance containers reach
the internet but no private, link-local, loopback or metadata address, except the destinations they need.

Why iptables in the engine's DOCKER-USER chain, written by a short-lived helper container (the instance image,
host network, NET_ADMIN) rather than rules inside each instance (they would need NET_ADMIN, which a compromised
browser could use to undo them) or an egress proxy (Chromium takes one proxy, which the operator's per-instance
proxies already are, and a proxy does not stop UDP or raw connections): the gateway already holds the engine's
socket, so it can write host rules without capabilities of its own; DOCKER-USER is the chain the engine keeps
for its users' rules, evaluated before its own for every forwarded packet (and, with br_netfilter, for traffic
between containers of one network); an INPUT rule covers what the containers send to the host itself.

The rules match packets that enter from the instance network's bridge, so they need a network of the fleet's
own (not Docker's default `bridge`, which other containers share). Openings, in this order: replies to
connections made from elsewhere (the gateway calling an instance), the gateway's own container, the host's DNS
servers, and each destination an instance is configured with (AI Studio's URL, its proxy, a loopback proxy's
relay) or the operator allowed (GATEWAY_DOCKER_EGRESS_ALLOW). Everything else private is rejected.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

# Where no instance may connect: IPv4 "this network", RFC 1918, CGNAT, loopback, link-local (cloud metadata at
# 169.254.169.254), IETF protocol assignments, benchmarking, multicast and reserved.
PRIVATE_V4 = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
)
# IPv6: unspecified, loopback, IPv4-mapped, NAT64 (they embed IPv4 addresses), 6to4, ULA, link-local, multicast.
PRIVATE_V6 = (
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "fc00::/7",
    "fe80::/10", "ff00::/8",
)
CHAIN_PREFIX = "AISF-"  # chains this module owns: AISF-F-<network> (forwarded), AISF-I-<network> (to the host)
FENCE_OK = "FENCE APPLIED"


@dataclass(frozen=True, order=True)
class Opening:
    """A destination instances may reach although it is private: an address or network, one port (TCP and UDP:
    a DNS server is one) or all."""

    network: str  # ipaddress network, e.g. 10.0.0.2/32
    port: int | None = None

    @property
    def version(self) -> int:
        return ipaddress.ip_network(self.network).version

    def rules(self, chain: str) -> list[str]:
        if not self.port:
            return [f"-A {chain} -d {self.network} -j RETURN"]
        return [f"-A {chain} -d {self.network} -p {proto} --dport {self.port} -j RETURN" for proto in ("tcp", "udp")]


@dataclass(frozen=True)
class FenceTarget:
    """The instance network as the host sees it."""

    network_id: str
    bridge: str  # the host's interface of the network, e.g. br-0123456789ab
    ipv6: bool  # the network has IPv6 addresses too

    @property
    def forward_chain(self) -> str:
        return f"{CHAIN_PREFIX}F-{self.network_id[:12]}"

    @property
    def input_chain(self) -> str:
        return f"{CHAIN_PREFIX}I-{self.network_id[:12]}"


def is_private(address: str) -> bool:
    """Whether the fence refuses this address (so that reaching it needs an opening)."""
    ip = ipaddress.ip_address(address)
    ranges = PRIVATE_V4 if ip.version == 4 else PRIVATE_V6
    return any(ip in ipaddress.ip_network(net) for net in ranges)


def parse_allow(entry: str) -> tuple[str, int | None]:
    """One GATEWAY_DOCKER_EGRESS_ALLOW entry: `address`, `network/prefix`, `host:port`, `[v6]:port` or `name`
    (a host name or a container on the instance network, looked up when the rules are written)."""
    entry = entry.strip()
    if not entry:
        raise ValueError("an empty entry")
    host, port = entry, None
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = _port(rest.removeprefix(":"), entry) if rest else None
    elif entry.count(":") == 1:
        host, _, rest = entry.partition(":")
        port = _port(rest, entry)
    if "/" in host:
        try:
            ipaddress.ip_network(host, strict=False)
        except ValueError as e:
            raise ValueError(f"{entry!r} is not a network: {e}") from e
    if not host:
        raise ValueError(f"{entry!r} has no host")
    return host, port


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{entry!r} has no valid port")
    return int(text)


def opening_for(host_or_network: str, port: int | None) -> Opening:
    """An opening for a literal address or network (host names are resolved by the caller)."""
    network = ipaddress.ip_network(host_or_network, strict=False)
    return Opening(str(network), port)


def rules(target: FenceTarget, version: int, exempt: Iterable[str], openings: Iterable[Opening]) -> str:
    """iptables-restore input (with --noflush: only our two chains are rewritten) for one address family."""
    forward, to_host = target.forward_chain, target.input_chain
    private = PRIVATE_V4 if version == 4 else PRIVATE_V6
    reject = "REJECT --reject-with " + ("icmp-admin-prohibited" if version == 4 else "icmp6-adm-prohibited")
    lines = ["*filter", f":{forward} - [0:0]", f":{to_host} - [0:0]"]
    for chain in (forward, to_host):
        lines.append(f"-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")
        lines += [f"-A {chain} -s {address} -j RETURN" for address in sorted(exempt) if _version(address) == version]
        lines += [rule for opening in sorted(set(openings)) if opening.version == version for rule in opening.rules(chain)]
    lines += [f"-A {forward} -d {net} -j {reject}" for net in private]
    lines += [f"-A {to_host} -j {reject}", "COMMIT", ""]
    return "\n".join(lines)


def _version(address: str) -> int:
    return ipaddress.ip_network(address, strict=False).version


def _families(target: FenceTarget) -> list[tuple[str, int]]:
    return [("iptables", 4)] + ([("ip6tables", 6)] if target.ipv6 else [])


def _backend(ipt: str) -> str:
    """Shell that sets B to the host's iptables backend: the one holding Docker's DOCKER-USER chain. nft first,
    and legacy only when nft has none (listing legacy tables instantiates them on the host)."""
    return (f'B=""; for b in nft legacy; do if {ipt}-$b -w -n -L DOCKER-USER >/dev/null 2>&1; then B=$b; break; fi;'
            " done")


def apply_script(target: FenceTarget, exempt: Iterable[str], openings: Iterable[Opening]) -> str:
    """The helper container's shell script: find the host's iptables (nft or legacy), write both chains, hook
    them, open the host's DNS servers, say FENCE APPLIED."""
    exempt, openings = list(exempt), list(openings)
    parts = [
        "set -eu",
        'bnf=$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 0)',
        '[ "$bnf" = 1 ] || echo "WARNING bridge-nf-call-iptables is off: traffic between containers of one network'
        ' (an instance to the gateway) is not filtered"',
    ]
    for ipt, version in _families(target):
        parts += [
            _backend(ipt),
            f'[ -n "$B" ] || {{ echo "no DOCKER-USER chain in the host\'s {ipt} (the engine runs without iptables,'
            f' rootless, or in a VM of its own)" >&2; exit 3; }}',
            f"printf %s {shlex.quote(rules(target, version, exempt, openings))} | {ipt}-$B-restore -w --noflush",
            f"{ipt}-$B -w -C DOCKER-USER -i {target.bridge} -j {target.forward_chain} 2>/dev/null"
            f" || {ipt}-$B -w -I DOCKER-USER 1 -i {target.bridge} -j {target.forward_chain}",
            f"{ipt}-$B -w -C INPUT -i {target.bridge} -j {target.input_chain} 2>/dev/null"
            f" || {ipt}-$B -w -I INPUT 1 -i {target.bridge} -j {target.input_chain}",
            # The host's DNS servers (the engine's embedded DNS forwards to them from the container's namespace).
            "for ns in $(awk '/^nameserver/ {print $2}' /etc/resolv.conf); do",
            f"  case $ns in {'*:*' if version == 4 else '*.*'}|127.*|::1) continue;; esac",
            f"  for p in udp tcp; do for c in {target.forward_chain} {target.input_chain}; do",
            f"    {ipt}-$B -w -I $c 2 -d $ns -p $p --dport 53 -j RETURN",
            "  done; done",
            "done",
        ]
    parts.append(f"echo {FENCE_OK}")
    return "\n".join(parts)


def remove_script(target: FenceTarget) -> str:
    """Unhook and delete both chains (a network removed, or a test done)."""
    parts = ["set +e"]
    for ipt, _ in _families(target):
        parts.append(_backend(ipt) + '; [ -n "$B" ] || exit 0')
        for hook, chain in (("DOCKER-USER", target.forward_chain), ("INPUT", target.input_chain)):
            parts.append(f"while {ipt}-$B -w -D {hook} -i {target.bridge} -j {chain} 2>/dev/null; do :; done")
            parts.append(f"{ipt}-$B -w -F {chain} 2>/dev/null; {ipt}-$B -w -X {chain} 2>/dev/null")
    parts.append("exit 0")
    return "\n".join(parts)


def fingerprint(script: str) -> str:
    return hashlib.sha256(script.encode()).hexdigest()[:16]
