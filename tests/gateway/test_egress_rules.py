"""The egress fence's rules as data (gateway/runtime/egress.py): what is private, the operator's openings, and
the iptables-restore text. The fence on a real engine is tested in test_docker_fence.py."""

from __future__ import annotations

import pytest

from gateway.runtime.egress import FenceTarget, Opening, apply_script, is_private, parse_allow, remove_script, rules

TARGET = FenceTarget(network_id="0123456789abcdef" * 4, bridge="br-0123456789ab", ipv6=False)


@pytest.mark.parametrize("address", [
    "10.1.2.3", "172.17.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "127.0.0.1", "0.0.0.0",
    "::1", "fd00::1", "fe80::1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:a00:1::1",
])
def test_private_and_metadata_addresses_are_fenced(address: str) -> None:
    assert is_private(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "142.250.1.1", "2001:4860:4860::8888"])
def test_public_addresses_are_not(address: str) -> None:
    assert not is_private(address)


@pytest.mark.parametrize(("entry", "parsed"), [
    ("10.0.0.2:3128", ("10.0.0.2", 3128)), ("10.0.0.0/24", ("10.0.0.0/24", None)), ("proxy.lan:1080", ("proxy.lan", 1080)),
    ("[fd00::2]:3128", ("fd00::2", 3128)), ("fd00::/64", ("fd00::/64", None)), ("simulator", ("simulator", None)),
])
def test_allow_entries(entry: str, parsed: tuple[str, int | None]) -> None:
    assert parse_allow(entry) == parsed


@pytest.mark.parametrize("entry", ["", "10.0.0.0/33", "host:0", "host:http", ":80", "[fd00::2]:99999"])
def test_bad_allow_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_allow(entry)


def test_openings_come_before_the_rejects_and_replies_before_all() -> None:
    text = rules(TARGET, 4, ["172.30.0.5"], [Opening("172.30.0.2/32", 9000), Opening("fd00::2/128", 80)])
    forward = [line for line in text.splitlines() if line.startswith(f"-A {TARGET.forward_chain} ")]
    assert forward[0].endswith("--ctstate RELATED,ESTABLISHED -j RETURN")
    assert forward[1] == f"-A {TARGET.forward_chain} -s 172.30.0.5 -j RETURN"  # the gateway's own container
    assert forward[2:4] == [f"-A {TARGET.forward_chain} -d 172.30.0.2/32 -p {proto} --dport 9000 -j RETURN"
                            for proto in ("tcp", "udp")]
    assert all("REJECT" in line for line in forward[4:]) and len(forward[4:]) == 11
    assert "fd00" not in text  # IPv6 openings go to ip6tables
    to_host = [line for line in text.splitlines() if line.startswith(f"-A {TARGET.input_chain} ")]
    assert to_host[-1].startswith(f"-A {TARGET.input_chain} -j REJECT")  # nothing of the host but the openings


def test_the_scripts_touch_only_this_networks_chains_and_ipv6_only_where_the_network_has_it() -> None:
    script = apply_script(TARGET, [], [])
    assert "ip6tables" not in script and f"-I DOCKER-USER 1 -i {TARGET.bridge} -j {TARGET.forward_chain}" in script
    assert "ip6tables" in apply_script(FenceTarget(TARGET.network_id, TARGET.bridge, ipv6=True), [], [])
    removal = remove_script(TARGET)
    assert f"-X {TARGET.forward_chain}" in removal and f"-X {TARGET.input_chain}" in removal and " -F DOCKER-USER" not in removal
