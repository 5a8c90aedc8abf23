"""`/docs` and `/redoc` in a real headless Chromium with every request off this service blocked (no CDN):
the pages still list the operations."""

from __future__ import annotations

import re

import pytest

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        yield browser
        browser.close()


def offline_page(browser, service):
    """A page that can reach only the service; anything else (a CDN, fonts) fails as it would offline."""
    page = browser.new_page()
    blocked: list[str] = []

    def route(r):
        if r.request.url.startswith(service.url):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return page, blocked


def test_swagger_ui_lists_operations_offline(browser, shared_service):
    page, blocked = offline_page(browser, shared_service)
    page.goto(f"{shared_service.url}/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    text = page.inner_text("body")
    assert "/v1/text-to-image" in text and "/v1/jobs/{job_id}" in text
    assert not blocked, blocked
    page.close()


def test_redoc_lists_operations_offline(browser, shared_service):
    page, blocked = offline_page(browser, shared_service)
    page.goto(f"{shared_service.url}/redoc")
    page.locator("h2", has_text="Run text-to-image").first.wait_for(timeout=60_000)
    assert "Job status, progress, outputs and error" in page.inner_text("body")
    assert not blocked, blocked
    page.close()


@pytest.mark.parametrize("task,operation", [("depth-estimation", "depth_estimation"), ("text-to-image", "text_to_image")])
def test_swagger_forms_run_as_prefilled(browser, shared_service, tmp_path, task, operation):
    """"Try it out" with a multipart form, as a newcomer does: the fields come prefilled from the schema
    (Swagger UI sends what they show), only the file is added, and the job is accepted: no out-of-range
    sample seed, no "string" prompts, no example webhook sent to example.com."""
    from tests.conftest import make_image

    photo = tmp_path / "photo.png"
    photo.write_bytes(make_image(96, 64, seed=3))
    page, _ = offline_page(browser, shared_service)
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.post_data or "") if r.url.endswith(f"/v1/{task}") else None)
    page.goto(f"{shared_service.url}/docs")
    op = f"#operations-tasks-{operation}"
    page.click(f"{op} .opblock-summary", timeout=30_000)
    page.click(f"{op} .try-out__btn")
    page.select_option(f"{op} select.content-type", "multipart/form-data")
    if page.locator(f"{op} input[type=file]").count():
        page.set_input_files(f"{op} input[type=file]", str(photo))
    page.fill(f"{op} input[placeholder='num_inference_steps']", "2")
    page.click(f"{op} .execute")
    status = page.locator(f"{op} .live-responses-table tr.response .response-col_status").first
    status.wait_for(timeout=30_000)
    body = page.inner_text(f"{op} .live-responses-table tr.response .response-col_description")
    assert status.inner_text().strip() in ("200", "202"), body[:1500]
    (form,) = sent
    parts = dict(re.findall(r'name="([^"]+)"[^\r]*\r\n(?:Content-Type: [^\r]*\r\n)?\r\n(.*?)\r\n--', form, re.S))
    assert parts.get("webhook", "") == "" and "example.com" not in form  # no sample webhook goes out
    assert "string" not in parts.values()  # Swagger's sample text for a string field
    assert parts["seed"] == "42" and parts["num_inference_steps"] == "2"
    # an optional text left empty (Swagger sends it as '') is unset: the default negative prompt applies
    latest = shared_service.client.get("/v1/jobs", params={"task": task, "limit": 1}).json()["data"][0]
    assert parts.get("negative_prompt", "") == "" and latest["input"]["negative_prompt"] is None
    page.close()
