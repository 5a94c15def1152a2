"""Conversations as one generation (gateway/api/conversation.py): which earlier images become references, in
which order, and how much of the earlier text follows the new turn. Through the official clients in
tests/gateway/test_client_apis.py; here the rules alone."""

from __future__ import annotations

import pytest

from gateway.api.conversation import CONTEXT_HEADER, Turn, markdown_images, read, signed_link_of, with_context
from gateway.errors import Invalid


def talk(turns: list[Turn], *, limit: int = 4, takes: bool = True, context: int = 600, prompt_max: int = 10_000):
    return read(turns, max_references=limit, takes_references=takes, context_chars=context, max_prompt_chars=prompt_max)


def test_a_single_turn_is_its_own_text_and_images() -> None:
    got = talk([Turn("user", ["a cat", "on a sofa"], ["A"])])
    assert (got.prompt, got.images, got.from_history) == ("a cat\non a sofa", ["A"], 0)


def test_earlier_images_follow_the_new_turns_own_newest_first_each_once() -> None:
    turns = [
        Turn("user", ["a cat"], ["U1"]), Turn("model", ["here"], ["M1"]),
        Turn("user", ["now red"]), Turn("model", [], ["M2", "M2b"]),
        Turn("user", ["add a hat"], ["U3"]),
    ]
    got = talk(turns, limit=4)
    assert got.images == ["U3", "M2", "M2b", "M1"] and got.from_history == 3
    again = talk([*turns[:4], Turn("user", ["again"], ["M1"])])
    assert again.images == ["M1", "M2", "M2b", "U1"]  # the one the new turn names is not repeated


def test_a_model_without_references_gets_no_history_and_a_full_turn_is_refused() -> None:
    turns = [Turn("user", ["a cat"]), Turn("model", [], ["M1"]), Turn("user", ["now red"])]
    assert talk(turns, takes=False).images == []
    with pytest.raises(Invalid) as refused:
        talk([Turn("user", ["x"], ["a", "b", "c"])], limit=2)
    assert refused.value.key == "too_many_references"
    with pytest.raises(Invalid) as nobody:
        talk([Turn("model", ["hello"])])
    assert nobody.value.key == "messages_no_user"


def test_earlier_requests_follow_as_bounded_context_newest_kept() -> None:
    turns = [Turn("user", ["first  request\nwith lines"]), Turn("model", ["Here is your image."]),
             Turn("user", ["second"]), Turn("user", ["third"])]
    assert talk(turns).prompt == f"third\n\n{CONTEXT_HEADER}\n- first request with lines\n- second"
    assert talk(turns, context=len("- second") + 1).prompt == f"third\n\n{CONTEXT_HEADER}\n- second"
    assert talk(turns, context=0).prompt == "third"
    assert "Here is your image" not in talk(turns).prompt  # the model's words are not repeated to it


def test_context_never_pushes_the_prompt_past_its_limit() -> None:
    text = "x" * 90
    assert with_context(text, ["y" * 50], 600, 100) == text
    bounded = with_context("z", ["a" * 10, "b" * 10], 600, 1 + 2 + len(CONTEXT_HEADER) + 1 + 12)
    assert bounded.endswith("- " + "b" * 10) and "a" * 10 not in bounded and len(bounded) <= 1 + 2 + len(CONTEXT_HEADER) + 13


@pytest.mark.parametrize(("url", "expected"), [
    ("http://gw:8812/v1/images/files/0b7c/1.png?expires=99&signature=abc", ("0b7c", 1, "99", "abc")),
    ("https://example.com/v1/images/files/t/0.webp?expires=1&signature=s", ("t", 0, "1", "s")),
    ("https://example.com/cat.png", None),
    ("https://example.com/v1/images/files/t/x.png?expires=1&signature=s", None),
    ("https://example.com/v1/images/files/t/1234.png?expires=1&signature=s", None),
])
def test_signed_links_are_told_by_their_path(url: str, expected: tuple | None) -> None:
    assert signed_link_of(url) == expected


def test_our_markdown_images_are_read_back_and_left_out_of_the_text() -> None:
    text = "Here it is.\n\n![image 1](http://gw:8812/v1/images/files/t/0.png?expires=1&signature=s)\n\n![x](data:image/png;base64,AAAA)"
    assert markdown_images(text) == (
        "Here it is.", ["http://gw:8812/v1/images/files/t/0.png?expires=1&signature=s", "data:image/png;base64,AAAA"])
    assert markdown_images("![not ours](ftp://x/a.png) plain") == ("![not ours](ftp://x/a.png) plain", [])
