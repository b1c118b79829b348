"""A tiny, real tokenizer with the slice of the HF API the datasets use,
plus the OpenUni prompt -> ``input_ids`` step.

Tests and dev configs need a tokenizer without transformers or a hub
download; UTF-8 bytes (offset past three special ids) are lossless and need
no vocabulary file.
"""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from blip3o_storage.training.registry import BUILDER

DEFAULT_CFG_PROMPT = "Generate an image."
DEFAULT_GENERATION_PROMPT = "Generate an image: {input}"


@BUILDER.register_module(force=True)
class ByteTokenizer:
    """Byte-level tokenizer: ids 0/1/2 are pad/bos/eos, byte ``b`` is ``b + 3``.

    ``encode``/``__call__``/``decode`` follow HF's signatures closely enough
    for OpenUni's dataset code (``encode(text, return_tensors='pt', add_special_tokens=True)``).
    """

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    offset = 3
    vocab_size = 256 + offset

    def __init__(self, add_bos: bool = True, add_eos: bool = True, model_max_length: int = 1 << 30) -> None:
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.model_max_length = model_max_length

    def __repr__(self) -> str:
        return f"ByteTokenizer(add_bos={self.add_bos}, add_eos={self.add_eos})"

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True, return_tensors: str | None = None,
               **_: Any) -> list[int] | torch.Tensor:
        """Ids of ``text``; ``return_tensors='pt'`` gives a (1, n) LongTensor like HF."""
        if not isinstance(text, str):
            raise TypeError(f"ByteTokenizer.encode expects str, got {type(text).__name__}")
        ids = [b + self.offset for b in text.encode("utf-8")]
        if add_special_tokens:
            ids = ([self.bos_token_id] if self.add_bos else []) + ids + ([self.eos_token_id] if self.add_eos else [])
        if return_tensors == "pt":
            return torch.tensor([ids], dtype=torch.long)
        if return_tensors is not None:
            raise ValueError(f"ByteTokenizer supports return_tensors=None or 'pt', not {return_tensors!r}")
        return ids

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True,
                 return_tensors: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """HF-style ``{'input_ids', 'attention_mask'}`` for one text (or a list, unpadded)."""
        if isinstance(text, str):
            ids = self.encode(text, add_special_tokens=add_special_tokens, return_tensors=return_tensors)
            mask = torch.ones_like(ids) if isinstance(ids, torch.Tensor) else [1] * len(ids)
            return {"input_ids": ids, "attention_mask": mask}
        if return_tensors is not None:
            raise ValueError("ByteTokenizer: return_tensors needs a single text (no padding of batches)")
        batch = [self.encode(t, add_special_tokens=add_special_tokens) for t in text]
        return {"input_ids": batch, "attention_mask": [[1] * len(ids) for ids in batch]}

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.flatten().tolist()
        out = bytearray()
        for i in ids:
            i = int(i)
            if i >= self.offset:
                out.append(i - self.offset)
            elif not skip_special_tokens:
                out += {0: b"<pad>", 1: b"<s>", 2: b"</s>"}[i]
        return out.decode("utf-8", errors="replace")


def build_prompt(caption: str, *, unconditional: bool, prompt_template: Mapping[str, Any] | None) -> str:
    """OpenUni's generation prompt for ``caption``.

    ``CFG`` / ``GENERATION`` keys of the template override the default
    wording; ``INSTRUCTION`` wraps it; ``IMG_START_TOKEN`` is appended when
    given (unless ``IMG_START_TOKEN_FOR_GENERATION`` is False), as OpenUni does.
    """
    template = prompt_template or {}
    if unconditional:
        prompt = template.get("CFG", DEFAULT_CFG_PROMPT)
    else:
        prompt = template.get("GENERATION", DEFAULT_GENERATION_PROMPT).format(input=caption.strip())
    if "INSTRUCTION" in template:
        prompt = template["INSTRUCTION"].format(input=prompt)
    if "IMG_START_TOKEN" in template and template.get("IMG_START_TOKEN_FOR_GENERATION", True):
        prompt += template["IMG_START_TOKEN"]
    return prompt


def encode_text(tokenizer: Any, text: str, tokenizer_kwargs: Mapping[str, Any] | None = None) -> torch.Tensor:
    """1-D LongTensor of ids from an HF-like tokenizer (``.encode(text,
    **tokenizer_kwargs)``) or a plain callable ``f(text)`` returning ids, a
    tensor or ``{'input_ids': ...}`` (HF kwargs mean nothing to it)."""
    if hasattr(tokenizer, "encode"):
        ids: Any = tokenizer.encode(text, **dict(tokenizer_kwargs or {}))
    elif callable(tokenizer):
        ids = tokenizer(text)
    else:
        raise TypeError(f"tokenizer {tokenizer!r} has no encode() and is not callable")
    if isinstance(ids, Mapping):
        ids = ids["input_ids"]
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ValueError(f"tokenizer returned ids of shape {tuple(ids.shape)}; expected one sequence")
    return ids


def prompt_input_ids(caption: str, tokenizer: Any, *, unconditional_prob: float,
                     prompt_template: Mapping[str, Any] | None, max_length: int,
                     tokenizer_kwargs: Mapping[str, Any] | None = None,
                     rng: Any = random) -> torch.Tensor:
    """Caption -> prompt -> ids truncated to ``max_length`` (OpenUni's ``_process_text``).

    ``rng`` defaults to the ``random`` module, which PyTorch reseeds in each
    DataLoader worker, so workers do not draw the same unconditional pattern.
    """
    unconditional = rng.uniform(0, 1) < unconditional_prob
    prompt = build_prompt(caption, unconditional=unconditional, prompt_template=prompt_template)
    return encode_text(tokenizer, prompt, tokenizer_kwargs)[:max_length]
