"""Tests of the simulator itself: HTTP logic with Litestar's TestClient, then one real-browser smoke test."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import re
import time
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import skip_or_fail
from litestar.testing import TestClient
from PIL import Image

from .api import BLOCKED_TEXT, FREE_LIMIT_MESSAGE, GENERATE_PATH, QUOTA_MESSAGE
from .app import create_app
from .config import default_config
from .fixtures import control, simulator_server, simulator_url  # noqa: F401  (pytest fixtures)
from .images import image_size, prompt_color

ACCOUNT = "alice@example.com"
UNICODE_PROMPT = '画一只坐在月球上的猫 🐱🌕, "quoted" \\ and\nnew line'
CHROMIUM = "/usr/bin/chromium"


def png_bytes(size: tuple[int, int] = (8, 8), color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def client():
    with TestClient(create_app()) as test_client:
        test_client.post("/_sim/config", json={"latency_ms": 0})
        yield test_client


def sign_in(client, account: str = ACCOUNT, continue_url: str = "/prompts/new_chat"):
    form = {"identifier": account, "Passwd": "any password", "continue": continue_url}
    return client.post("/_signin", data=form, follow_redirects=False)


def generate(client, prompt: str = "a red fox", aspect_ratio: str = "Auto", uploads: list | None = None):
    return client.post(GENERATE_PATH, json={"prompt": prompt, "aspect_ratio": aspect_ratio, "uploads": uploads or []})


def page_config(html: str) -> dict:
    match = re.search(r'<script id="sim-config" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


# ---------- images ----------


@pytest.mark.parametrize(
    ("ratio", "size"),
    [("Auto", (512, 512)), ("1:1", (512, 512)), ("16:9", (512, 288)), ("9:16", (288, 512)), ("21:9", (512, 219)), ("4:5", (410, 512))],
)
def test_image_size_keeps_the_long_side_at_512(ratio, size):
    assert image_size(ratio) == size


# ---------- sign-in and redirects ----------


@pytest.mark.parametrize("path", ["/", "/prompts/new_chat?model=gemini-2.5-flash-image", "/prompts/new_image", "/u/0/prompts/new_chat"])
def test_app_pages_redirect_to_signin_without_session(client, path):
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"] == "/ServiceLogin?continue=" + quote("http://testserver.local" + path, safe="")


def test_signin_sets_google_cookies_and_returns_to_continue(client):
    response = sign_in(client, continue_url="/prompts/new_chat?model=m")
    assert response.status_code == 303
    assert response.headers["location"] == "/prompts/new_chat?model=m"
    cookies = response.headers.get_list("set-cookie")
    assert [c.split("=")[0] for c in cookies] == ["SID", "HSID", "SSID", "APISID", "SAPISID", "SIDTS"]
    assert all(c.startswith(f"{c.split('=')[0]}={ACCOUNT};") and "Secure" not in c for c in cookies[:5])
    assert cookies[5].startswith(f"SIDTS={ACCOUNT}.1.")  # the rotating cookie, renewed at each page load

    page = client.get("/prompts/new_chat?model=m")
    assert page.status_code == 200
    assert page_config(page.text)["account"] == ACCOUNT
    assert client.get("/_sim/record").json()["page_loads"] == 1


def test_a_page_load_renews_the_cookie_and_a_stale_value_is_signed_out(client):
    client.post("/_sim/config", json={"stale_grace_ms": 0})
    sign_in(client, continue_url="/prompts/new_chat")
    first = client.cookies.get("SIDTS")
    page = client.get("/prompts/new_chat")
    renewed = page.headers.get("set-cookie", "")
    assert page.status_code == 200 and renewed.startswith("SIDTS=") and first not in renewed
    stale = client.get("/prompts/new_chat", cookies={"SIDTS": first}, follow_redirects=False)
    assert stale.status_code == 302 and "/ServiceLogin" in stale.headers["location"]
    record = client.get("/_sim/record").json()
    assert record["stale_cookie_refused_by_account"][ACCOUNT] == 1 and record["cookie_renewals_by_account"][ACCOUNT] == 2


def test_the_value_just_replaced_passes_within_its_grace(client):
    sign_in(client, continue_url="/prompts/new_chat")
    first = client.cookies.get("SIDTS")
    assert client.get("/prompts/new_chat").status_code == 200  # renewed
    in_flight = client.get("/prompts/new_chat", cookies={"SIDTS": first}, follow_redirects=False)
    assert in_flight.status_code == 200


def test_a_signed_out_page_can_show_only_a_signin_link(client):
    client.post("/_sim/config", json={"signed_out_page": "link"})
    page = client.get("/prompts/new_chat", follow_redirects=False)
    assert page.status_code == 200 and ">Sign in</a>" in page.text and "/ServiceLogin?continue=" in page.text
    assert "<textarea" not in page.text


def test_signin_refuses_an_empty_password(client):
    response = client.post("/_signin", data={"identifier": ACCOUNT, "Passwd": "", "continue": "/"}, follow_redirects=False)
    assert response.headers["location"].startswith("/ServiceLogin?")
    assert "set-cookie" not in response.headers


def test_revoked_account_is_logged_out_until_it_signs_in_again(client):
    sign_in(client)
    client.post(f"/_sim/accounts/{ACCOUNT}/revoke")
    assert client.get("/prompts/new_chat", follow_redirects=False).status_code == 302
    assert generate(client).status_code == 401
    sign_in(client)
    assert client.get("/prompts/new_chat", follow_redirects=False).status_code == 200


def test_signin_refused_config_leads_the_email_step_to_the_refusal_page(client):
    assert 'data-refuse="false"' in client.get("/ServiceLogin").text
    client.post("/_sim/config", json={"signin_refused": True})
    assert 'data-refuse="true"' in client.get("/ServiceLogin").text
    refusal = client.get("/v3/signin/rejected")
    assert refusal.status_code == 200
    assert "This browser or app may not be secure" in refusal.text and "Couldn’t sign you in" in refusal.text
    assert client.post("/_sim/config", json={"signin_refused": "yes"}).status_code == 400


def test_signin_not_required_lets_anonymous_visitors_in(client):
    client.post("/_sim/config", json={"signin_required": False})
    assert page_config(client.get("/prompts/new_chat").text)["account"] == "anonymous"
    assert generate(client).status_code == 200


def test_page_carries_the_markup_variant_and_dialogs(client):
    sign_in(client)
    client.post("/_sim/config", json={"markup": "legacy", "missing_roles": ["run_button"], "dialogs": ["consent"]})
    config = page_config(client.get("/prompts/new_chat").text)
    assert (config["markup"], config["missing_roles"], config["dialogs"]) == ("legacy", ["run_button"], ["consent"])


# ---------- control API ----------


def test_config_merges_validates_and_resets(client):
    snapshot = client.post("/_sim/config", json={"image_count": 2, "text": None}).json()
    assert snapshot["global"]["image_count"] == 2 and snapshot["global"]["latency_ms"] == 0
    assert client.post("/_sim/config", json={"colour": "red"}).status_code == 400
    assert client.post("/_sim/config", json={"mode": "explode"}).status_code == 400
    assert client.post("/_sim/config", json={"missing_roles": ["nope"]}).status_code == 400
    client.post("/_sim/accounts/bob/config", json={"mode": "quota"})
    assert client.get("/_sim/config").json()["accounts"] == {"bob": {"mode": "quota"}}

    client.post("/_sim/reset")
    assert client.get("/_sim/config").json() == {"global": default_config(), "accounts": {}}


def test_generation_answers_a_png_of_the_ratio_and_records_everything(client):
    sign_in(client)
    reference = png_bytes()
    upload = {"name": "ref.png", "mime": "image/png", "data_b64": base64.b64encode(reference).decode()}
    response = generate(client, UNICODE_PROMPT, "21:9", [upload])

    assert response.status_code == 200
    answer = response.json()
    assert answer["text"] == "Here is your image."
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0]["data"])))
    assert (image.format, image.size) == ("PNG", (512, 219))
    assert image.getpixel((0, 0)) == prompt_color(UNICODE_PROMPT)

    record = client.get("/_sim/record").json()
    (generation,) = record["generations"]
    assert generation["prompt"] == UNICODE_PROMPT
    assert (generation["account"], generation["aspect_ratio"], generation["outcome"]) == (ACCOUNT, "21:9", "ok")
    assert generation["uploads"] == [
        {"name": "ref.png", "mime": "image/png", "size": len(reference), "sha256": hashlib.sha256(reference).hexdigest()}
    ]
    assert generation["ended_at"] >= generation["started_at"]
    assert record["in_flight_by_account"] == {ACCOUNT: 0}


@pytest.mark.parametrize(
    ("mode", "status", "check"),
    [
        ("quota", 429, lambda body: body["error"]["status"] == "RESOURCE_EXHAUSTED" and body["error"]["message"] == QUOTA_MESSAGE),
        ("rate_limit", 429, lambda body: body["error"]["status"] != "RESOURCE_EXHAUSTED"),
        ("internal", 500, lambda body: body["error"]["status"] == "INTERNAL"),
        ("blocked", 200, lambda body: body == {"images": [], "text": BLOCKED_TEXT, "finish_reason": "SAFETY"}),
        ("logout", 401, lambda body: body["error"]["status"] == "UNAUTHENTICATED"),
        ("region", 403, lambda body: "Failed to list models" in body["error"]["message"]),
    ],
)
def test_failure_modes(client, mode, status, check):
    sign_in(client)
    client.post("/_sim/config", json={"mode": mode})
    response = generate(client)
    assert response.status_code == status
    assert check(response.json())
    assert client.get("/_sim/record").json()["generations"][0]["outcome"] == mode


def test_logout_mode_logs_the_account_out(client):
    sign_in(client)
    client.post("/_sim/config", json={"mode": "logout", "mode_times": 1})
    assert generate(client).status_code == 401
    assert client.get("/prompts/new_chat", follow_redirects=False).status_code == 302


def test_mode_times_then_back_to_ok(client):
    sign_in(client)
    client.post("/_sim/config", json={"mode": "internal", "mode_times": 2})
    assert [generate(client).status_code for _ in range(3)] == [500, 500, 200]
    assert client.get("/_sim/config").json()["global"]["mode"] == "ok"


def test_account_override_applies_to_that_account_only(client):
    client.post("/_sim/accounts/bob@example.com/config", json={"mode": "quota", "image_count": 0})
    sign_in(client, "bob@example.com")
    assert generate(client).status_code == 429
    sign_in(client, ACCOUNT)
    assert len(generate(client).json()["images"]) == 1


async def test_concurrency_is_counted_per_account_on_a_real_server(simulator_url):  # noqa: F811
    # a real uvicorn server: Litestar's AsyncTestClient runs requests one at a time
    control(simulator_url, "/_sim/config", {"latency_ms": 300})

    async def signed_in_client(account: str) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=simulator_url, timeout=10)
        await client.post("/_signin", data={"identifier": account, "Passwd": "x", "continue": "/"})
        return client

    alice, bob = await signed_in_client(ACCOUNT), await signed_in_client("bob")
    try:
        calls = [c.post(GENERATE_PATH, json={"prompt": p, "aspect_ratio": "1:1"}) for c, p in [(alice, "1"), (alice, "2"), (alice, "3"), (bob, "4")]]
        statuses = [r.status_code for r in await asyncio.gather(*calls)]
    finally:
        await alice.aclose()
        await bob.aclose()
    record = control(simulator_url, "/_sim/record")
    assert statuses == [200, 200, 200, 200]
    assert record["max_concurrent_by_account"] == {ACCOUNT: 3, "bob": 1}
    assert record["in_flight_by_account"] == {ACCOUNT: 0, "bob": 0}


# ---------- one real browser ----------

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
FETCH_AS_BASE64 = """async (src) => {
  const bytes = new Uint8Array(await (await fetch(src, {credentials: "include"})).arrayBuffer());
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}"""
MODEL_IMAGES = "ms-chat-turn .chat-turn-container.model ms-image-chunk img.loaded-image"
BUSY = "ms-run-button button svg .stoppable-spinner"


@pytest.mark.browser
async def test_browser_smoke(simulator_url):  # noqa: F811
    if not os.path.exists(CHROMIUM):
        skip_or_fail("needs Debian's Chromium")
    from playwright.async_api import async_playwright, expect

    control(simulator_url, "/_sim/config", {"dialogs": ["autosave"], "latency_ms": 800, "image_count": 2})
    reference = png_bytes((64, 48))
    prompt = "画一只坐在月球上的猫 🐱"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1440, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))

            # sign in through the two-step page
            await page.goto(f"{simulator_url}/prompts/new_chat?model=gemini-2.5-flash-image")
            assert "/ServiceLogin?continue=" in page.url
            await page.fill("input[type=email]", ACCOUNT)
            await page.click("#identifierNext button")
            await page.fill("input[type=password]", "secret")
            await page.click("#passwordNext button")
            await page.wait_for_url("**/prompts/new_chat?model=gemini-2.5-flash-image")
            await page.click('ms-autosave-enabled-by-default-dialog button:has-text("Got it")')

            # one reference image through the menu and the hidden file input
            await page.click('button[data-test-id="add-media-button"]')
            await page.click('div.cdk-overlay-container [role=menu] button[role=menuitem][aria-label="Upload a file"]')
            file = {"name": "ref.png", "mimeType": "image/png", "buffer": reference}
            await page.set_input_files('input[type="file"][data-test-upload-file-input]', files=[file])
            await page.wait_for_selector("ms-prompt-box .multi-media-row ms-media-chip")
            await page.keyboard.press("Escape")
            await page.click('button[aria-label*="Agree to the copyright acknowledgement"]')

            # 16:9 from the run settings panel
            await page.click('ms-run-settings mat-select[aria-label="Aspect ratio"]')
            await page.locator("div.cdk-overlay-container mat-option", has_text=re.compile(r"^\s*16:9\s*$")).click()
            await expect(page.locator('ms-run-settings mat-select[aria-label="Aspect ratio"]')).to_have_text(re.compile("16:9"))

            # prompt and run
            textarea = page.locator('ms-prompt-box textarea[aria-label="Enter a prompt"]')
            run_button = page.locator('ms-run-button button[type="submit"]')
            await expect(run_button).to_be_enabled()  # an attached file is enough to run
            await textarea.fill(prompt)
            assert await textarea.input_value() == prompt
            await expect(run_button).to_be_enabled()
            await run_button.click()
            await page.wait_for_selector(BUSY)
            assert await run_button.get_attribute("aria-label") == "Stop"

            # the answer: two images in the model turn, read back from their blob: URLs
            await expect(page.locator(MODEL_IMAGES)).to_have_count(2)
            await expect(page.locator(BUSY)).to_have_count(0)
            src = await page.locator(MODEL_IMAGES).first.evaluate("img => img.currentSrc")
            assert src.startswith("blob:")
            image = Image.open(io.BytesIO(base64.b64decode(await page.evaluate(FETCH_AS_BASE64, src))))
            assert (image.format, image.size) == ("PNG", (512, 288))
            assert image.getpixel((0, 0)) == prompt_color(prompt)

            model_text = page.locator("ms-chat-turn .chat-turn-container.model ms-text-chunk")
            await expect(model_text).to_have_text("Here is your image.")
            user_turn = page.locator("ms-chat-turn .chat-turn-container.user")
            await expect(user_turn.locator("ms-image-chunk img.loaded-image")).to_have_count(1)
            await expect(user_turn.locator("ms-text-chunk")).to_have_text(prompt)
            assert errors == []
        finally:
            await browser.close()

    (generation,) = control(simulator_url, "/_sim/record")["generations"]
    assert (generation["account"], generation["prompt"], generation["aspect_ratio"]) == (ACCOUNT, prompt, "16:9")
    assert generation["uploads"][0]["sha256"] == hashlib.sha256(reference).hexdigest()


# ---------- today's page: models, sizes, thoughts, chats, redirects ----------


def test_models_sizes_thoughts_and_saved_chats(client):
    sign_in(client)
    client.post("/_sim/config", json={"thinking_image": True, "unavailable_models": ["gemini-3-pro-image"]})
    body = {"prompt": "p", "aspect_ratio": "1:4", "model": "gemini-nano-banana-2.1", "image_size": "2K",
            "chat_id": "c1", "temporary": False}
    answer = client.post(GENERATE_PATH, json=body).json()
    assert Image.open(io.BytesIO(base64.b64decode(answer["images"][0]["data"]))).size == (512, 2048)
    assert len(answer["thoughts"]["images"]) == 1  # a draft, apart from the answer's images
    client.post(GENERATE_PATH, json={**body, "temporary": True, "chat_id": "c2"})
    refused = client.post(GENERATE_PATH, json={**body, "model": "gemini-3-pro-image", "chat_id": "c1"})
    assert refused.status_code == 403 and "not available to your account" in refused.json()["error"]["message"]
    text_only = client.post(GENERATE_PATH, json={**body, "model": "gemini-2.5-flash", "image_size": None}).json()
    assert text_only["images"] == [] and text_only["text"]
    record = client.get("/_sim/record").json()
    assert [g["image_size"] for g in record["generations"]][:2] == ["2K", "2K"]
    assert record["saved_chats"] == 1  # c1 once; the temporary chat c2 is not saved
    assert client.post(GENERATE_PATH, json={**body, "image_size": "3K"}).status_code == 400


def test_free_limit_fails_inside_a_200_answer(client):
    sign_in(client)
    client.post("/_sim/config", json={"mode": "free_limit"})
    response = generate(client)
    assert response.status_code == 200
    assert response.json()["error"]["message"] == FREE_LIMIT_MESSAGE and response.json()["images"] == []


def test_page_model_url_forms_and_region_redirect(client):
    sign_in(client)
    client.post("/_sim/config", json={"unavailable_models": ["gemini-3-pro-image"], "event_dialogs": {"run": ["autosave"]}})
    refused = page_config(client.get("/prompts/new_chat?model=gemini-3-pro-image").text)
    assert (refused["model"], refused["refused_model"]) == ("gemini-nano-banana-2.1", "gemini-3-pro-image")
    assert refused["event_dialogs"] == {"run": ["autosave"]}
    client.post("/_sim/config", json={"model_from_url": False, "app_path": True})
    moved = client.get("/prompts/new_chat?model=gemini-nano-banana-2.1", follow_redirects=False)
    assert moved.headers["location"] == "/app/prompts/new_chat?model=gemini-nano-banana-2.1"
    assert page_config(client.get(moved.headers["location"]).text)["model"] == "gemini-2.5-flash"
    client.post("/_sim/config", json={"region_redirect": True})
    blocked = client.get("/prompts/new_chat", follow_redirects=False)
    assert blocked.headers["location"] == "/gemini-api/docs/available-regions"
    assert "Available regions for Google AI Studio" in client.get(blocked.headers["location"]).text
    assert client.post("/_sim/config", json={"event_dialogs": {"later": ["autosave"]}}).status_code == 400
    assert client.post("/_sim/config", json={"upload_signal": "smoke"}).status_code == 400


EXTRA_MODEL = {"id": "gemini-nano-banana-2.2", "label": "Nano Banana 2.2", "ratios": ["1:1", "16:9", "8:1"], "sizes": ["1K", "2K"]}


def test_extra_model_in_the_picker_opens_by_url_and_generates(client):
    sign_in(client)
    assert client.post("/_sim/config", json={"extra_models": [EXTRA_MODEL]}).status_code in (200, 201)
    page = page_config(client.get("/prompts/new_chat?model=gemini-nano-banana-2.2").text)
    assert page["model"] == "gemini-nano-banana-2.2"
    entry = page["models"][-1]
    assert (entry["id"], entry["title"], entry["ratios"], entry["sizes"]) == (
        "gemini-nano-banana-2.2", "Nano Banana 2.2", ["1:1", "16:9", "8:1"], ["1K", "2K"])
    answer = client.post(GENERATE_PATH, json={"prompt": "p", "aspect_ratio": "8:1", "model": "gemini-nano-banana-2.2",
                                              "image_size": "2K"}).json()
    assert Image.open(io.BytesIO(base64.b64decode(answer["images"][0]["data"]))).size == (2048, 256)
    for bad in ([{"id": "x", "colour": "red"}], [{"id": ""}], [{"id": "x", "sizes": ["3K"]}], [{"id": "x", "ratios": ["7:3"]}], {}):
        assert client.post("/_sim/config", json={"extra_models": bad}).status_code == 400


def test_a_chats_history_is_recorded_and_the_page_and_uploads_take_their_time(client):
    sign_in(client)
    made = png_bytes((4, 4))
    history = [{"role": "user", "text": "a cat", "images": []},
               {"role": "model", "text": "here", "images": [base64.b64encode(made).decode()]}]
    body = {"prompt": "now red", "chat_id": "c1", "temporary": True, "history": history}
    assert client.post(GENERATE_PATH, json=body).status_code == 200
    (generation,) = client.get("/_sim/record").json()["generations"]
    assert (generation["chat_id"], generation["history_turns"]) == ("c1", 2)
    assert generation["history_images"] == [hashlib.sha256(made).hexdigest()]
    bad = client.post(GENERATE_PATH, json={**body, "history": [{"role": "model", "images": ["%%"]}]})
    assert bad.status_code == 400 and "history image" in bad.text
    assert client.post("/_sim/config", json={"page_delay_ms": -1}).status_code == 400
    client.post("/_sim/config", json={"page_delay_ms": 300, "upload_delay_ms": 700})
    started = time.monotonic()
    page = client.get("/prompts/new_chat")
    assert time.monotonic() - started >= 0.3 and page_config(page.text)["upload_delay_ms"] == 700
