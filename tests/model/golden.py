"""The golden cases of tests/fixtures read as tensors, and the sampler's requests made from them."""

from __future__ import annotations

import json

from safetensors import safe_open

from model.sampler import SampleRequest


def load_cases(path):
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        return {
            case: ({k.split(".", 1)[1]: f.get_tensor(k) for k in f.keys() if k.startswith(case + ".")}, json.loads(meta[case]))
            for case in meta
        }


def requests_of(tensors: dict, meta: dict) -> list[SampleRequest]:
    noise = tensors["noise"]
    if noise.ndim == 4:  # text-to-image: one frame
        noise = noise[:, None]
    get = lambda key, b: tensors[key][b] if key in tensors else None  # noqa: E731
    return [
        SampleRequest(
            noise=noise[b],
            denoise_mask=meta["denoise_mask"],
            cond_embeds=tensors["cond_embeds"][b],
            cond_mask=tensors["cond_mask"][b],
            num_inference_steps=meta["num_inference_steps"],
            guidance_scale=meta["guidance_scale"],
            uncond_embeds=get("uncond_embeds", b),
            uncond_mask=get("uncond_mask", b),
            cond_latents=get("cond_latents", b),
            noise_scale=meta["noise_scale"],
        )
        for b in range(noise.shape[0])
    ]
