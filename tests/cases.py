"""Requests shared by the suite: a case for every task (its payload and the files it returns), the test
images they carry, and a quick text-to-image request. The model's tests run them on the demo checkpoint;
the service and client tests send the same payloads over HTTP."""

from __future__ import annotations

from tests.conftest import b64_image

IMG = b64_image(96, 64)
SQ = b64_image(64, 64, seed=2)
FAST = {"num_inference_steps": 2}
SMALL = {"width": 128, "height": 96, **FAST}
SMALL_SQ = {"width": 64, "height": 64, **FAST}

# task, payload, expected files (name -> (kind, mode))
CASES = {
    "text-to-image": ({"prompt": "a cat", **SMALL}, {"image.png": ("image", "RGB")}),
    "depth-to-image": ({"image": IMG, "prompt": "a cat", **SMALL}, {"image.png": ("image", "RGB")}),
    "canny-to-image": ({"image": IMG, "prompt": "a cat", **SMALL}, {"image.png": ("image", "RGB")}),
    "hed-to-image": ({"image": IMG, "prompt": "a cat", **SMALL}, {"image.png": ("image", "RGB")}),
    "pose-to-image": ({"image": IMG, "prompt": "a man", **SMALL}, {"image.png": ("image", "RGB")}),
    "semantic-map-to-image": ({"image": IMG, "prompt": "x", "classes": [{"name": "dragon"}], **SMALL}, {"image.png": ("image", "RGB")}),
    "boxes-to-image": ({"image": IMG, "prompt": "x", "classes": [{"name": "bird"}], **SMALL}, {"image.png": ("image", "RGB")}),
    "depth-estimation": ({"image": IMG, **SMALL}, {"depth.png": ("depth16", "I;16"), "depth_preview.png": ("preview", "RGB")}),
    "edge-estimation": ({"image": IMG, **SMALL}, {"edges.png": ("image", "RGB")}),
    "pose-estimation": ({"image": IMG, **SMALL}, {"pose.png": ("image", "RGB")}),
    "segmentation": ({"image": IMG, "classes": [{"name": "a"}, {"name": "b"}], **SMALL},
                     {"segmentation.png": ("image", "RGB"), "mask_0.png": ("mask", "L"), "mask_1.png": ("mask", "L")}),
    "detection": ({"image": IMG, "classes": [{"name": "bird"}], **SMALL}, {"detection.png": ("image", "RGB")}),
    "deblurring": ({"image": IMG, **SMALL}, {"image.png": ("image", "RGB")}),
    "inpainting": ({"image": IMG, "mask": IMG, **SMALL}, {"image.png": ("image", "RGB")}),
    "image-editing": ({"image": IMG, "prompt": "snow", **SMALL}, {"image.png": ("image", "RGB")}),
    "id-customization": ({"images": [IMG, IMG, IMG], "prompt": "a chef", **SMALL}, {"image.png": ("image", "RGB")}),
    "subject-driven": ({"image": IMG, "item": "dog", "prompt": "a dog", **SMALL}, {"image.png": ("image", "RGB")}),
    "image-to-multiview": ({"image": SQ, **SMALL_SQ}, {f"view_{i}.png": ("image", "RGB") for i in (1, 2, 3)}),
    "text-to-multiview": ({"prompt": "a chair", **SMALL_SQ}, {f"view_{i}.png": ("image", "RGB") for i in range(4)}),
    "camera-pose-estimation": ({"images": [SQ, SQ, SQ], **SMALL_SQ}, {}),
    "generate": ({"prompt": "[[depth2image]] x", "frames": [{"generate": True}, {"generate": False, "image": IMG}], **SMALL},
                 {"frame_0.png": ("image", "RGB")}),
}


# A quick text-to-image request (64x64, two steps) for the service tests.
SMALL_REQUEST = {"prompt": "a small test", "width": 64, "height": 64, "num_inference_steps": 2}
