"""A tiny random-weight checkpoint in the released layout, for tests and the local demo.

Every component is the real class at toy size (NextDiT, a 16-channel AutoencoderKL with scale factor 8,
a T5EncoderModel, a SentencePiece T5 tokenizer trained here on a built-in word list, the scheduler
config), so the demo exercises exactly the loading and sampling code a real checkpoint goes through.
Its outputs are noise. A 512x512 two-frame task with 4 steps runs in seconds on two CPU cores.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import torch

from .tasks import NEGATIVE_PROMPT

DEMO_MARKER = "_onediffusion_demo"

_WORDS = (
    "a an the of on in at with and or to from by for over under near behind front left right top bottom "
    "photo image picture painting drawing render portrait landscape close up view shot style detailed "
    "cat dog bird horse person woman man child face hair eyes hand car bicycle house tree flower sky cloud "
    "sun moon sea lake river mountain city street room table chair window door light shadow dark bright "
    "red orange yellow green blue purple pink brown black white grey gold silver cyan magenta lime teal navy "
    "big small old young happy beautiful soft sharp blurry mask boundingbox item depth edge pose dragon"
).split()
_SPECIAL = "[[text2image]] [[depth2image]] [[canny2image]] [[hed2img]] [[pose2image]] [[semanticmap2image]] " \
    "[[boundingbox2image]] [[deblurring]] [[image_inpainting]] [[image_editing]] [[faceid]] [[multiview]] " \
    "[[subject_driven]] [[img0]] [[img1]] [[img2]] [[img3]] <#00FFFF cyan mask: dragon> <item: dog> 0123456789"


def _write_tokenizer(folder: Path) -> None:
    import sentencepiece as spm

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(_WORDS) for _ in range(16)) for _ in range(600)] + [_SPECIAL, NEGATIVE_PROMPT] * 30
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=400, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
        num_threads=1, shuffle_input_sentence=False, minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "extra_ids": 100, "model_max_length": 512, "legacy": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def make_demo_checkpoint(target: str | Path, seed: int = 0) -> Path:
    """Write the tiny checkpoint into `target` (created if needed) and return its path."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    from .nextdit import NextDiT

    root = Path(target)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    _write_tokenizer(root / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")

    caption_channels = 64
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer), d_model=caption_channels, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", dropout_rate=0.0,
        )
    )
    text_encoder.save_pretrained(root / "text_encoder")

    transformer = NextDiT(
        input_size=(1, 64, 64), patch_size=(1, 2, 2), in_channels=16, hidden_size=192, depth=2, num_heads=4,
        num_kv_heads=2, multiple_of=32, caption_channels=caption_channels, qk_norm=True,
        model_max_length=512, rotary_max_length=128,
    )
    with torch.no_grad():  # open the text gates so the prompt changes the (noise) output
        for layer in transformer.layers:
            layer.attention.gate.normal_(0.0, 0.5)
    transformer.save_pretrained(root / "transformer")

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=512,
        scaling_factor=1.5305, shift_factor=0.0609, mid_block_add_attention=False,
    )
    vae.save_pretrained(root / "vae")

    FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    ).save_pretrained(root / "scheduler")

    index = {
        "_class_name": "OneDiffusionPipeline",
        DEMO_MARKER: True,
        "transformer": ["model.nextdit", "NextDiT"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    }
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root
