"""Input echo (images as size + SHA-256) and PNG text chunks, without a service."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import numpy as np
from PIL import Image

from core.provenance import input_echo, parameter_texts, with_text_chunks
from model.outputs import encode_png16
from model.tasks import TASKS
from tests.conftest import make_image


def test_echo_replaces_images_by_summary():
    png = make_image(96, 64)
    request = TASKS["inpainting"].model_validate(
        {"image": base64.b64encode(png).decode(), "mask": "data:image/png;base64," + base64.b64encode(png).decode(),
         "prompt": "a cat", "seed": 7}
    )
    echo = input_echo(request)
    expected = {"sha256": hashlib.sha256(png).hexdigest(), "bytes": len(png), "format": "png", "width": 96, "height": 64}
    assert echo["image"] == expected and echo["mask"] == expected
    assert echo["seed"] == 7 and echo["prompt"] == "a cat"
    assert "webhook" not in echo and "output_format" not in echo


def test_text_chunks_keep_pixels_including_16_bit():
    depth = np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) * 31
    png = encode_png16(depth)
    texts = parameter_texts("depth-estimation", {"prompt": "ü ñ 猫", "seed": 3})
    tagged = with_text_chunks(png, texts)
    image = Image.open(io.BytesIO(tagged))
    image.load()
    assert image.mode == "I;16" and np.array_equal(np.asarray(image), depth)
    assert json.loads(image.text["parameters"]) == {"task": "depth-estimation", "input": {"prompt": "ü ñ 猫", "seed": 3}}
