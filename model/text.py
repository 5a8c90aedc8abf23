"""Prompt encoding with T5: max 300 tokens, padded to that length, a warning when text is cut."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch

MAX_TEXT_TOKENS = 300


@dataclass
class EncodedPrompt:
    embeds: torch.Tensor  # (L, D) float32 on the encoder's device
    mask: torch.Tensor  # (L,) long
    truncated: Optional[str] = None  # the text that was cut off, if any


class PromptEncoder:
    """Tokenise and encode prompts; recent prompts (the default negative prompt above all) are cached."""

    def __init__(self, tokenizer, text_encoder, max_length: int = MAX_TEXT_TOKENS, cache_size: int = 64):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_length = max_length
        self.cache_size = cache_size
        self._cache: OrderedDict[str, EncodedPrompt] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    def _cut_text(self, prompt: str) -> Optional[str]:
        ids = self.tokenizer(prompt, truncation=False, add_special_tokens=True).input_ids
        if len(ids) <= self.max_length:
            return None
        return self.tokenizer.decode(ids[self.max_length - 1 : -1], skip_special_tokens=True)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[EncodedPrompt]:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            tokens = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.max_length,
                truncation=True,
                add_special_tokens=True,
                return_tensors="pt",
            )
            ids = tokens.input_ids.to(self.device)
            mask = tokens.attention_mask.to(self.device)
            states = self.text_encoder(ids, attention_mask=mask)[0].float()
            for i, prompt in enumerate(missing):
                self._cache[prompt] = EncodedPrompt(states[i], mask[i].long(), self._cut_text(prompt))
        out = []
        for prompt in prompts:
            self._cache.move_to_end(prompt)
            out.append(self._cache[prompt])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out
