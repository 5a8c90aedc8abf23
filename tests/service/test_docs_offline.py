"""`/docs` and `/redoc` in a real headless Chromium with every request off this service blocked (no CDN):
the pages still list the operations."""

from __future__ import annotations

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
