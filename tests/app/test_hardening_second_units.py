"""The second probe's findings that need no service: the decode budget, the address guard's missed
ranges, bodies with huge numbers, NaN cursors, invisible prompts, class-name schema, tenant names with a
newline, and temp files left by a full disk."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from app.body import load_json
from app.errors import ApiError
from core.webhook_guard import UnsafeWebhook, resolve_checked
from model.decode_budget import DecodeBudget, DecodeBusy


# ---- 1: the decode budget queues, then refuses; a decode larger than it runs alone --------------------------
def test_decode_budget_queues_then_refuses():
    budget = DecodeBudget(100, wait_s=0.3)
    order: list[str] = []
    with budget.reserve(80):
        with pytest.raises(DecodeBusy):
            with budget.reserve(30):
                pass  # does not fit beside the 80 within 0.3 s

        def later():
            with budget.reserve(30):
                order.append("second")

        waiter = threading.Thread(target=later)
        budget.wait_s = 5
        waiter.start()
        time.sleep(0.2)
        order.append("first done")
    waiter.join(5)
    assert order == ["first done", "second"]
    with budget.reserve(10_000):  # larger than the whole budget: runs when alone
        assert budget.in_use == 100
    assert budget.in_use == 0 and budget.holders == 0


def test_headers_are_read_without_a_canvas_and_costs_follow_the_format():
    import io

    from PIL import Image

    from model.images import read_header

    webp, jpeg = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (3000, 2000)).save(webp, format="WEBP", lossless=True)
    Image.new("RGB", (3000, 2000)).save(jpeg, format="JPEG")
    w, j = read_header(webp.getvalue(), 40_000_000), read_header(jpeg.getvalue(), 40_000_000)
    assert (w.format, w.width, w.height) == ("WEBP", 3000, 2000) and (j.format, j.width, j.height) == ("JPEG", 3000, 2000)
    assert w.decode_cost(False) >= 12 * 6_000_000  # libwebp's canvases
    assert j.decode_cost(False) < 6_000_000 // 8  # checked at 1/8 scale
    with pytest.raises(ValueError, match="more than the limit"):
        read_header(webp.getvalue(), 5_000_000)


# ---- 13: ranges the guard let through ----------------------------------------------------------------------
@pytest.mark.parametrize("url,words", [
    ("http://168.63.129.16/", "cloud metadata"),  # Azure wireserver
    ("http://192.0.0.192/", "cloud metadata"),  # Oracle Cloud metadata
    ("http://192.0.0.200/", "reserved"),  # IETF protocol assignments
    ("http://[fec0::1]/", "reserved"),  # deprecated site-local
    ("http://[3fff::1]/", "reserved"),  # documentation (RFC 9637)
])
def test_guard_refuses_metadata_and_non_public_ranges(url, words):
    with pytest.raises(UnsafeWebhook) as refused:
        resolve_checked(url, [])
    assert words in str(refused.value)


def test_image_urls_never_reach_loopback_or_link_local_even_when_allowlisted():
    allow = ["127.0.0.0/8", "169.254.0.0/16", "fe80::/10", "localhost"]
    assert resolve_checked("http://127.0.0.1/x", allow)[1] == "127.0.0.1"  # webhooks may, when allowed
    for url in ("http://127.0.0.1/x", "http://localhost/x", "http://169.254.169.254/x", "http://[fe80::1]/x"):
        with pytest.raises(UnsafeWebhook, match="image URLs may only name public addresses"):
            resolve_checked(url, allow, "image URL", "IMAGE_URL_ALLOWLIST", local_never=True)
    # A development image server on this machine: only the very address the allowlist names; metadata never.
    exact = ["127.0.0.2", "169.254.169.254"]
    assert resolve_checked("http://127.0.0.2/x", exact, "image URL", "IMAGE_URL_ALLOWLIST", local_never=True)[1] == "127.0.0.2"
    for url in ("http://127.0.0.1/x", "http://169.254.169.254/x"):
        with pytest.raises(UnsafeWebhook):
            resolve_checked(url, exact, "image URL", "IMAGE_URL_ALLOWLIST", local_never=True)


# ---- 8: numbers Python will not convert are a 400 -----------------------------------------------------------
def test_a_json_integer_of_5000_digits_is_a_400():
    with pytest.raises(ApiError) as refused:
        load_json(('{"seed": ' + "9" * 5000 + "}").encode())
    assert refused.value.status == 400 and "too many digits" in refused.value.message


# ---- 11: a cursor that decodes to NaN -----------------------------------------------------------------------
@pytest.mark.parametrize("score", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_cursors_are_422(score):
    import base64

    from app.listing import decode_cursor

    cursor = base64.urlsafe_b64encode(f'[{score}, "x"]'.encode()).decode().rstrip("=")
    with pytest.raises(ApiError) as refused:
        decode_cursor(cursor)
    assert refused.value.status == 422


# ---- 19 and 16: invisible prompts; class names documented ---------------------------------------------------
@pytest.mark.parametrize("prompt", ["\u200b\u200b\u200b", "\u200b \ufeff\u2060\u200d", "\u202e\u200e "])
def test_prompts_of_only_invisible_characters_are_refused(prompt):
    from pydantic import ValidationError

    from model.tasks import TextToImage

    with pytest.raises(ValidationError, match="more than spaces"):
        TextToImage(prompt=prompt)
    assert TextToImage(prompt="a\u200bcat").prompt == "a\u200bcat"  # visible text with them is fine


def test_schema_says_class_names_refuse_angle_and_square_brackets():
    import re

    from model.tasks import ClassSpec

    schema = ClassSpec.model_json_schema()["properties"]["name"]
    assert re.fullmatch(schema["pattern"], "red dragon") and not re.search(schema["pattern"], "a<b>")
    assert "<, >, [ or ]" in schema["description"]


# ---- 14: tenant names with a final newline ------------------------------------------------------------------
@pytest.mark.parametrize("tenant", ["acme\n", "acme\r\n", "\nacme"])
def test_tenant_names_with_newlines_are_refused(redis_url, tenant):
    from redis import Redis

    from app.api_keys import KeyStore
    from core.connection import keys_for

    store = KeyStore(Redis.from_url(redis_url), keys_for("odtenants"))
    with pytest.raises(ValueError, match="tenant"):
        store.create(tenant, "")


# ---- 12: a full disk leaves no temp files --------------------------------------------------------------------
def test_a_failed_write_leaves_no_temp_file(tmp_path):
    """A real write failure: the file-size limit (RLIMIT_FSIZE) stands in for a full disk."""
    from tests.paths import ROOT

    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(ROOT)!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from core.storage import LocalStore
store = LocalStore({str(tmp_path)!r})
for call in (lambda: store.save("job1", "out.png", b"x" * 100000), lambda: store.save_input(b"y" * 100000)):
    try:
        call()
    except OSError as exc:
        print("refused", exc.errno)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.count("refused") == 2, out.stdout + out.stderr
    left = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert left == [], left


def test_json_error_messages_do_not_crash_on_huge_numbers_in_forms():
    with pytest.raises(ApiError) as refused:
        load_json(json.dumps({"x": 1}).replace("1", "1" * 4400).encode(), "the form field 'cameras'")
    assert refused.value.status == 400 and "'cameras'" in refused.value.message


# ---- 20: a job that runs twice sends its webhook once, under one delivery id --------------------------------
def test_a_jobs_event_is_queued_once_under_one_delivery_id(redis_url, tmp_path):
    from redis import Redis

    from core.connection import queues
    from core.job_store import JobStore
    from core.settings import Settings

    settings = Settings(redis_url=redis_url, queue_prefix=f"odonce{time.time_ns()}", results_dir=str(tmp_path))
    store = JobStore(Redis.from_url(redis_url), settings)
    body = {"event": "job.succeeded", "job": {"id": "j1", "status": "succeeded"}}
    store.enqueue_webhook("job", "j1", body)
    store.enqueue_webhook("job", "j1", {**body, "job": {"id": "j1", "status": "succeeded", "finished_at": "later"}})
    store.enqueue_webhook("batch", "b1", {"event": "batch.item.succeeded", "job": {"id": "j1"}, "batch_id": "b1"})
    store.enqueue_webhook("batch", "b1", {"event": "batch.item.succeeded", "job": {"id": "j2"}, "batch_id": "b1"})
    _, queue = queues(store.redis, settings)
    jobs = queue.get_jobs()
    assert len(jobs) == 3, [j.description for j in jobs]
    ids = [j.args[2] for j in jobs]
    assert len(set(ids)) == 3
