"""The web playground in a real headless Chromium against the real service: text-to-image, depth
estimation from an uploaded file, and an API error shown as the API says it. Screenshots are kept as
test artefacts (under $PLAYGROUND_SCREENSHOTS, else the test's temporary folder). Without chromium the
tests skip, unless PLAYGROUND_REQUIRE_BROWSER is set (CI sets it). With
UPDATE_DOCS_SCREENSHOT=1 the depth one is also written to docs/playground.png for the README."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_image

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]



@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        message = "no chromium on this machine (Debian: apt-get install chromium; or set CHROMIUM=/path/to/it)"
        if os.environ.get("PLAYGROUND_REQUIRE_BROWSER"):  # CI (.ci/run) installs it: missing there is a failure
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("PLAYGROUND_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser, shared_service):
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(shared_service.url + "/")  # redirects to /playground/
    page.wait_for_selector(".task-item[data-task='text-to-image']")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def choose(page, task: str) -> None:
    page.click(f".task-item[data-task='{task}']")
    page.wait_for_function(f"document.querySelector('#task-title').textContent === {task!r}.replace(/^./, c => c.toUpperCase()).replace(/-/g, ' ')")


def test_text_to_image(page, shots):
    assert page.url.endswith("/playground/#text-to-image")
    page.wait_for_function("document.querySelector('#service-status').textContent.includes('1 worker ready')")
    choose(page, "text-to-image")
    # the form comes from the schema: limits are there; on the demo checkpoint the size and steps are the
    # quick ones (seconds on a CPU, not the model's 1024 px / 50 steps), and a note says so
    page.wait_for_selector("#demo-note:not([hidden])")
    assert "finishes in seconds" in page.inner_text("#demo-note")
    assert page.input_value("#f-num_inference_steps") == "8" and page.get_attribute("#f-num_inference_steps", "max") == "200"
    assert page.input_value("#f-width") == "256" and page.input_value("#f-height") == "256"
    assert page.get_attribute("#f-width", "step") == "16"
    page.fill("#f-prompt", "a lighthouse on a cliff at sunset")
    page.fill("#f-width", "96")
    page.fill("#f-height", "64")
    page.fill("#f-num_inference_steps", "4")
    page.click("#run")
    image = page.wait_for_selector("#result img[data-output='image.png']", timeout=90_000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image, timeout=30_000)
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [96, 64]
    assert page.inner_text("#job-status") == "Succeeded"
    assert page.inner_text("#progress-text").startswith("step 4 / 4")
    assert page.get_attribute("#result a.download", "download") == "image.png"
    assert page.locator("#recent li[data-job]").count() == 1
    curl = page.evaluate("asCurl()")
    assert curl.startswith(f"curl -X POST {page.evaluate('location.origin')}/v1/text-to-image") and '"width":96' in curl
    python = page.evaluate("asPython()")
    assert "client.text_to_image(\"a lighthouse on a cliff at sunset\", width=96, height=64, num_inference_steps=4)" in python
    page.screenshot(path=str(shots / "text-to-image.png"), full_page=True)


def test_cameras_default_and_limit_are_the_apis(page, shared_service):
    """Camera rows start at the API's distance (1.5) and stop at the server's MAX_VIEWS."""
    choose(page, "text-to-multiview")
    rows = page.locator("#f-cameras .item")
    assert rows.count() == 4
    assert {rows.nth(i).locator("[data-k=distance]").input_value() for i in range(4)} == {"1.5"}
    limit = shared_service.client.get("/openapi.json").json()["components"]["schemas"]["TextToMultiviewRequest"]["properties"]["cameras"]["maxItems"]
    assert limit == 8
    add = page.locator("#f-cameras > button")
    while not add.is_disabled():
        add.click()
    assert rows.count() == limit
    rows.nth(0).locator("button").click()  # removing one allows one more
    assert not add.is_disabled()


def test_several_outputs_in_one_run(page, shots):
    """num_outputs > 1 answers a batch: the page follows its jobs and shows every image with its seed."""
    choose(page, "text-to-image")
    page.fill("#f-prompt", "three lighthouses")
    page.fill("#f-width", "64")
    page.fill("#f-height", "64")
    page.fill("#f-num_inference_steps", "2")
    page.evaluate("document.querySelector('#advanced').open = true")
    page.fill("#f-num_outputs", "3")
    page.fill("#f-seed", "10")
    page.click("#run")
    page.wait_for_function("document.querySelectorAll('#result img[data-output=\"image.png\"]').length === 3", timeout=90_000)
    page.wait_for_function("[...document.querySelectorAll('#result img')].every(i => i.complete && i.naturalWidth === 64)", timeout=30_000)
    assert page.inner_text("#job-status") == "Succeeded"
    captions = page.locator("#result figcaption span").all_inner_texts()
    assert [c.split(" · ")[0] for c in captions] == ["seed 10", "seed 11", "seed 12"]
    assert page.inner_text("#progress-text").startswith("3 of 3 images")
    assert page.locator("#recent li[data-job]").count() >= 3
    page.screenshot(path=str(shots / "num-outputs.png"), full_page=False)


def test_depth_estimation_from_an_uploaded_file(page, shots, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(make_image(96, 64, seed=5))
    choose(page, "depth-estimation")
    page.set_input_files("input[data-image-field='image']", str(photo))
    page.wait_for_selector(".drop img[alt='photo.png']")
    page.fill("#f-width", "96")
    page.fill("#f-height", "64")
    page.fill("#f-num_inference_steps", "3")
    page.click("#run")
    preview = page.wait_for_selector("#result img[data-output='depth_preview.png']", timeout=90_000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=preview, timeout=30_000)
    # a colour map: more than one colour, and not grey
    colours = preview.evaluate("""img => {
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
        const d = ctx.getImageData(0, 0, c.width, c.height).data; const seen = new Set(); let coloured = 0;
        for (let i = 0; i < d.length; i += 4) { seen.add(d[i] + ',' + d[i+1] + ',' + d[i+2]); if (Math.abs(d[i] - d[i+2]) > 20) coloured++; }
        return [seen.size, coloured];
    }""")
    assert colours[0] > 1 and colours[1] > 0, colours
    assert page.locator("#result img[alt='input']").count() == 1  # shown beside the input
    assert page.get_attribute("#result a[download='depth.png']", "href").startswith(page.evaluate("location.origin"))
    assert page.inner_text("#job-status") == "Succeeded"
    page.wait_for_timeout(400)  # the progress bar's transition
    page.screenshot(path=str(shots / "depth-estimation.png"), full_page=False)
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        page.screenshot(path=str(ROOT / "docs" / "playground.png"), full_page=False)
    # "copy as curl" and "copy as Python" are commands that work, from the folder holding the upload
    curl = page.evaluate("asCurl()")
    assert "-F image=@'photo.png'" in curl
    if shutil.which("curl"):
        answer = subprocess.run(["bash", "-c", curl], cwd=tmp_path, capture_output=True, text=True, timeout=90)
        job = json.loads(answer.stdout)
        assert job["status"] == "succeeded" and job["task"] == "depth-estimation", answer.stdout + answer.stderr
        assert {o["name"]: (o["width"], o["height"]) for o in job["outputs"]}["depth.png"] == (96, 64)
    python = page.evaluate("asPython()")
    assert 'client.depth_estimation("photo.png", width=96, height=64, num_inference_steps=3)' in python
    env = {**os.environ, "PYTHONPATH": str(ROOT / "clients" / "python")}
    run = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("succeeded"), run.stdout + run.stderr
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["depth.png", "depth_preview.png"]


def test_api_errors_are_shown_as_the_api_says(page, shots):
    choose(page, "text-to-image")
    page.fill("#f-prompt", "x")
    page.fill("#f-width", "100")
    page.fill("#f-height", "64")
    page.click("#run")
    page.wait_for_selector("#form-error:not([hidden])")
    text = page.inner_text("#form-error")
    assert "invalid_request" in text and "(422)" in text and "width" in text and "multiple of 16" in text
    assert page.locator(".field.invalid[data-field='width']").count() == 1
    page.screenshot(path=str(shots / "error.png"), full_page=False)


def run_and_wait(page, timeout: float = 90_000) -> None:
    page.click("#run")
    page.wait_for_function("['Succeeded', 'Failed', 'Canceled'].includes(document.querySelector('#job-status').textContent)", timeout=timeout)
    assert page.inner_text("#job-status") == "Succeeded", page.inner_text("#result")


def paint_stroke(page) -> None:
    """Drag the mouse across the mask painter as a user paints, until the form holds a mask. The painter is
    scrolled into view first: the mouse acts at viewport coordinates, and a canvas below the fold (or one
    that moved while the page settled) would get no stroke."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    canvas = page.wait_for_selector("canvas.paint")
    for _ in range(3):
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + 10, box["y"] + 10)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=6)
        page.mouse.up()
        try:
            page.wait_for_function("() => !!collect().body.mask", timeout=5_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError("three strokes on the mask painter left no mask in the form")


def painted_pixels(page, selector: str) -> int:
    """Pixels of a canvas that are neither transparent nor the plot's near-white background."""
    return page.eval_on_selector(selector, """c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && Math.min(d[i], d[i + 1], d[i + 2]) < 200) n++;
        return n;
    }""")


def test_structured_results_are_drawn(page, shots, tmp_path):
    photo, square = tmp_path / "photo.png", tmp_path / "square.png"
    photo.write_bytes(make_image(96, 64, seed=6))
    square.write_bytes(make_image(64, 64, seed=7))
    # inpainting: the mask is painted on the image
    choose(page, "inpainting")
    page.set_input_files("input[data-image-field='image']", str(photo))
    paint_stroke(page)
    white = page.evaluate("""() => new Promise(ok => { const img = new Image(); img.onload = () => {
        const c = document.createElement('canvas'); c.width = img.width; c.height = img.height; const x = c.getContext('2d'); x.drawImage(img, 0, 0);
        const d = x.getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] === 255) n++;
        ok([c.width, c.height, n]); }; img.onerror = () => ok(null); img.src = collect().body.mask; })""")
    assert white is not None and white[:2] == [96, 64] and 0 < white[2] < 96 * 64, white
    page.fill("#f-width", "96")
    page.fill("#f-height", "64")
    page.fill("#f-num_inference_steps", "2")
    run_and_wait(page)
    # segmentation: masks over the input, with a legend per class
    choose(page, "segmentation")
    page.set_input_files("input[data-image-field='image']", str(photo))
    page.fill(".list-editor.classes [data-k=name]", "sky")
    page.fill("#f-width", "96")
    page.fill("#f-height", "64")
    page.fill("#f-num_inference_steps", "2")
    run_and_wait(page)
    page.wait_for_selector("#result .legend input[type=checkbox]")
    assert "sky" in page.inner_text("#result .legend") and painted_pixels(page, "#result canvas") > 0
    # camera poses: a 3-D plot of the cameras
    choose(page, "camera-pose-estimation")
    page.set_input_files("input[data-image-field='images']", [str(square), str(square)])
    page.fill("#f-width", "64")
    page.fill("#f-height", "64")
    page.fill("#f-num_inference_steps", "2")
    run_and_wait(page)
    page.wait_for_selector("canvas.plot3d")
    page.wait_for_timeout(200)  # drawn on the next animation frame
    assert painted_pixels(page, "canvas.plot3d") > 50
    page.screenshot(path=str(shots / "camera-poses.png"), full_page=True)


def test_api_key_cancel_and_recent_jobs(browser, make_service, shots):
    """Keys on, no worker: the key field asks for a key, the job stays queued, Cancel ends it."""
    service = make_service(workers=0, deliverer=False, auth_disabled="false")
    key = service.cli("keys", "create", "--tenant", "playground", "--name", "browser test").strip().splitlines()[-1]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(service.url + "/playground/#text-to-image")
    page.wait_for_selector("#apikey-box.needed")
    page.fill("#f-prompt", "waits in the queue")
    page.fill("#f-width", "64")
    page.fill("#f-height", "64")
    page.click("#run")
    page.wait_for_selector("#form-error:not([hidden])")
    assert "unauthorized" in page.inner_text("#form-error") and "(401)" in page.inner_text("#form-error")
    page.fill("#apikey", key)
    page.press("#apikey", "Tab")  # stored on change
    page.click("#run")
    page.wait_for_function("document.querySelector('#job-status').textContent.startsWith('Queued')")
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#job-status').textContent === 'Canceled'", timeout=30_000)
    assert page.locator("#recent li[data-job] .pill.canceled").count() == 1
    assert "Authorization: Bearer $ONEDIFFUSION_API_KEY" in page.evaluate("asCurl()")
    page.reload()
    page.wait_for_selector(".task-item")
    assert page.input_value("#apikey") == key and page.locator("#recent li[data-job]").count() == 1
    page.screenshot(path=str(shots / "keys-and-cancel.png"))
    context.close()
