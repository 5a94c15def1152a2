"""The panel's catalogue page, in process (fake runtime), behind the admin token: the models the fleet serves
(packaged, the operator's edit, learned from a fake page), retired ones, and the edit, CSRF-checked; a refused edit
is shown beside the textarea with the reason and nothing stored."""

from __future__ import annotations

import json
from typing import Any

from litestar.testing import AsyncTestClient

from tests.panel.test_access import signed_in
from tests.panel.test_selectors_panel import HTMX

EDIT = {"version": "ops-1", "models": [{"id": "gemini-nano-banana-2.3", "name": "Nano Banana 2.3", "aspect_ratios": ["1:1", "3:2"]}]}


async def test_the_catalogue_page_lists_models_and_takes_an_edit(guarded: AsyncTestClient[Any]) -> None:
    csrf = await signed_in(guarded)
    page = await guarded.get("/catalogue")
    assert page.status_code == 200 and "data-catalogue-document" in page.text
    assert 'data-model="gemini-nano-banana-2.1" data-source="packaged"' in page.text
    assert 'data-model="gemini-3.1-flash-image" data-source="retired"' in page.text
    assert 'data-nav="catalogue"' in page.text

    headers = {**HTMX, "X-CSRFToken": csrf}
    saved = await guarded.post("/catalogue", data={"document": json.dumps(EDIT)}, headers=headers)
    assert saved.status_code == 200 and "data-catalogue-message" in saved.text
    assert 'data-model="gemini-nano-banana-2.3" data-source="operator"' in saved.text
    assert (await guarded.get("/api/catalogue")).json()["override"] == EDIT

    for document, words in ((('{"models": [{"id": "m-1", "aspect_ratios": []}]}'), "offers no aspect ratio"),
                            ('{"models": [{"id": "m-1", "aspect_ratios": ["1:1"], "colour": "red"}]}', "Unknown field"),
                            ("{not json", "not valid JSON")):
        refused = await guarded.post("/catalogue", data={"document": document}, headers=headers)
        assert refused.status_code in (400, 422) and "data-catalogue-error" in refused.text and words in refused.text, refused.text
        assert (await guarded.get("/api/catalogue")).json()["override"] == EDIT  # the current catalogue stays

    reset = await guarded.post("/catalogue/reset", headers=headers)
    assert reset.status_code == 200 and (await guarded.get("/api/catalogue")).json()["override"] is None
