"""Batching of text-to-image samples (OpenUni's ``collate_func_gen`` without xtuner).

Registered in our ``BUILDER`` and in mmengine's ``FUNCTIONS`` so a config's
``collate_fn=dict(type='blip3o_collate')`` works with mmengine's Runner.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from mmengine.registry import FUNCTIONS

from blip3o_storage.training.registry import BUILDER

DEFAULT_PAD_TOKEN_INDEX = 0  # xtuner's DEFAULT_PAD_TOKEN_INDEX


def blip3o_collate(instances: Sequence[dict[str, Any]], pad_index: int = DEFAULT_PAD_TOKEN_INDEX,
                   padding_side: str = "right") -> dict[str, Any]:
    """Pad ``input_ids`` (with an ``attention_mask``), stack ``pixel_values``
    and/or ``image_latents``; returns ``{'data': ..., 'data_samples': None}``
    like OpenUni so its models take the batch unchanged. ``image_file`` is
    kept as a list for debugging."""
    if not instances:
        raise ValueError("blip3o_collate: empty batch")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', not {padding_side!r}")
    ids = [torch.as_tensor(x["input_ids"], dtype=torch.long) for x in instances]
    lengths = [len(t) for t in ids]
    width = max(lengths)
    input_ids = torch.full((len(ids), width), pad_index, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for row, (t, n) in enumerate(zip(ids, lengths)):
        if n == 0:
            continue
        if padding_side == "right":
            input_ids[row, :n], attention_mask[row, :n] = t, True
        else:
            input_ids[row, -n:], attention_mask[row, -n:] = t, True
    data: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    for key in ("pixel_values", "image_latents", "image_tokens"):
        present = [key in x for x in instances]
        if any(present):
            if not all(present):
                raise ValueError(f"blip3o_collate: {key!r} is in some samples of the batch but not all")
            data[key] = torch.stack([torch.as_tensor(x[key]) for x in instances])
    if all("image_file" in x for x in instances):
        data["image_file"] = [x["image_file"] for x in instances]
    return {"data": data, "data_samples": None}


def _register() -> None:
    BUILDER.register_module(name="blip3o_collate", module=blip3o_collate, force=True)
    FUNCTIONS.register_module(name="blip3o_collate", module=blip3o_collate, force=True)


_register()

__all__ = ["DEFAULT_PAD_TOKEN_INDEX", "blip3o_collate"]
