"""How the reference VLM is asked and graded: a greedy reply of at most 4 tokens, its first word, and the
blanked image that shows how much of an answer comes from the picture."""

from __future__ import annotations

import string

import torch
from PIL import Image


def first_word(text: str) -> str:
    """The first word of a reply, lower case, punctuation stripped (what is graded)."""
    words = text.strip().lower().split()
    return words[0].strip(string.punctuation) if words else ""


@torch.no_grad()
def answer(vlm, processor, inputs: dict[str, torch.Tensor]) -> str:
    """The model's greedy reply (at most 4 new tokens) to a processed image + question, on its device."""
    inputs = {k: v.to(vlm.device) for k, v in inputs.items()}
    out = vlm.generate(**inputs, max_new_tokens=4, do_sample=False)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def blank_like(image: Image.Image) -> Image.Image:
    """A white image of the same size."""
    return Image.new("RGB", image.size, (255, 255, 255))


