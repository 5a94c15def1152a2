"""The public-address check sees through every IPv6 form that carries an IPv4 address (issue 21, point 4): mapped,
translated, compatible, NAT64, 6to4, Teredo and ISATAP, each with a private and a public IPv4 address inside;
then the same forms given as a webhook's and a chat image's address, refused through the API."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from gateway.addresses import AddressRefused, checked_address, public
from gateway.runtime.fake import FakeRuntime
from tests.gateway.pool import open_pool

# (form, IPv6 address, whether it is public): each private row carries 10.0.0.1, 127.0.0.1 or 169.254.169.254.
TABLE: list[tuple[str, str, bool]] = [
    ("plain IPv4, private", "10.0.0.1", False),
    ("plain IPv4, public", "8.8.8.8", True),
    ("plain IPv6, public", "2001:4860:4860::8888", True),
    ("plain IPv6, loopback", "::1", False),
    ("unspecified", "::", False),
    ("IPv4-mapped, loopback", "::ffff:127.0.0.1", False),
    ("IPv4-mapped, public", "::ffff:8.8.8.8", True),
    ("IPv4-translated, private", "::ffff:0:10.0.0.1", False),
    ("IPv4-compatible, private", "::10.0.0.1", False),
    ("IPv4-compatible, metadata", "::169.254.169.254", False),
    ("NAT64 well-known, private", "64:ff9b::10.0.0.1", False),
    ("NAT64 well-known, metadata", "64:ff9b::a9fe:a9fe", False),
    ("NAT64 well-known, public", "64:ff9b::8.8.8.8", True),
    ("NAT64 local use, private", "64:ff9b:1::10.0.0.1", False),
    ("NAT64 local use, /48 placement", "64:ff9b:1:a00:0:100::", False),
    ("6to4, private", "2002:a00:1::1", False),
    ("6to4, loopback", "2002:7f00:1::1", False),
    ("6to4, public", "2002:808:808::1", True),
    ("Teredo, private client (obfuscated)", "2001:0:4136:e378:8000:63bf:f5ff:fffe", False),
    ("ISATAP, private", "2600::5efe:10.0.0.1", False),
    ("ISATAP with the u bit, private", "2600::200:5efe:192.168.1.1", False),
    ("ISATAP, public", "2600::200:5efe:8.8.8.8", True),
]


@pytest.mark.parametrize(("form", "address", "expected"), TABLE, ids=[row[0] for row in TABLE])
def test_every_ipv4_carried_in_ipv6_is_unwrapped_before_deciding(form: str, address: str, expected: bool) -> None:
    assert public(ipaddress.ip_address(address)) is expected, form


PRIVATE_IN_IPV6 = [address for form, address, expected in TABLE if not expected and ":" in address and address != "::1"]


@pytest.mark.parametrize("address", PRIVATE_IN_IPV6)
async def test_a_literal_address_of_each_form_is_refused_before_connecting(address: str) -> None:
    with pytest.raises(AddressRefused) as refused:
        await checked_address(address, 80)
    assert refused.value.reason == "private"


async def test_webhooks_and_chat_images_refuse_the_wrapped_forms(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    wrapped = ["64:ff9b::a9fe:a9fe", "::10.0.0.1", "2002:a00:1::1", "::ffff:0:10.0.0.1"]
    async with open_pool(database_url, tmp_path, fake, instances=1, webhook_secret="s") as pool:
        for address in wrapped:
            refused = await pool.http.post("/tasks", json={"prompt": "x", "callback_url": f"http://[{address}]/hook"})
            assert refused.status_code == 422 and refused.json()["error"] == "callback_url_refused", (address, refused.text)
            image = {"type": "image_url", "image_url": {"url": f"http://[{address}]/cat.png"}}
            messages = [{"role": "user", "content": [{"type": "text", "text": "x"}, image]}]
            answer = await pool.http.post("/v1/chat/completions", json={"messages": messages})
            assert answer.status_code == 422 and answer.json()["error"]["code"] == "image_url_private", (address, answer.text)
        assert await pool.task_count() == 0 and pool.fake.generations == []
