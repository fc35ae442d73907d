"""Images and questions -> the reference VLM's inputs: a thumbnail plus a grid of crops, like AnyRes.

Resize rule: an image of any size or aspect is padded to a square with white (centred, so its aspect is
kept), converted to RGB (grayscale is replicated, RGBA is composited over white), and resized to
``grid * crop`` pixels a side. The thumbnail is the whole image at ``crop`` pixels; the crops are the
``grid x grid`` tiles at full resolution, in raster order after the thumbnail. Each crop becomes
``(crop / patch)**2`` visual tokens, so a sample carries ``(1 + grid**2) * (crop / patch)**2`` of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from tokenomy._validation import TokenomyError


def to_rgb_square(image: Image.Image | np.ndarray) -> Image.Image:
    """Any PIL image or ``(H, W[, C])`` uint8 array -> an RGB square, padded with white, aspect kept."""
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or image.dtype != np.uint8:
            raise TokenomyError(f"an image array must be uint8 (H, W) or (H, W, C), got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TokenomyError(f"images must be PIL images or uint8 arrays, got {type(image).__name__}")
    if min(image.size) < 1:
        raise TokenomyError(f"image has no pixels: size {image.size}")
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, image)
    image = image.convert("RGB")
    w, h = image.size
    side = max(w, h)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    return square


@dataclass(frozen=True)
class CropLayout:
    """How the reference processor cuts an image: an optional thumbnail first, then a ``rows x cols`` grid of
    crops, each ``side x side`` patches. Stored in the model config (``crop_layout``), where the LLaVA adapter
    reads it."""

    thumbnail: bool = False
    rows: int = 1
    cols: int = 1
    side: int = 24

    @property
    def num_crops(self) -> int:
        return int(self.thumbnail) + self.rows * self.cols

    @property
    def tokens_per_crop(self) -> int:
        return self.side * self.side


@dataclass
class ReferenceProcessor:
    """Tokenizes questions and cuts images into the crops the reference VLM expects; pixels in [0, 1] are
    normalised per channel with ``mean`` and ``std`` (the tower's training statistics)."""

    tokenizer: object
    layout: CropLayout
    crop: int
    image_token_id: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def crops(self, image) -> torch.Tensor:
        """``(num_crops, 3, crop, crop)`` normalised pixel values: thumbnail first, then the grid."""
        square = to_rgb_square(image)
        full = square.resize((self.layout.cols * self.crop, self.layout.rows * self.crop), Image.BICUBIC)
        tiles = [full.resize((self.crop, self.crop), Image.BICUBIC)] if self.layout.thumbnail else []
        for r in range(self.layout.rows):
            for c in range(self.layout.cols):
                box = (c * self.crop, r * self.crop, (c + 1) * self.crop, (r + 1) * self.crop)
                tiles.append(full.crop(box))
        pixels = torch.from_numpy(np.stack([np.asarray(t, dtype=np.float32) for t in tiles])).permute(0, 3, 1, 2)
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in (self.mean, self.std))
        return (pixels / 255 - mean) / std

    def prompt_ids(self, question: str) -> list[int]:
        """Chat-formatted prompt with one placeholder per visual token, ending where the answer starts."""
        encode = lambda text: self.tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
        visual = [self.image_token_id] * (self.layout.num_crops * self.layout.tokens_per_crop)
        return (
            encode("<|im_start|>user\n") + visual + encode("\n" + question + "<|im_end|>\n<|im_start|>assistant\n")
        )

    def __call__(self, images, questions, answers=None) -> dict[str, torch.Tensor]:
        """Batch of images and questions -> ``input_ids``, ``attention_mask``, ``pixel_values``.

        Prompts are left-padded (ready for ``generate``). With ``answers``, each answer and ``<|im_end|>``
        follow its prompt (right-padded) and ``labels`` mark them for the training loss.
        """
        if isinstance(questions, str):
            images, questions = [images], [questions]
            answers = None if answers is None else [answers]
        if len(images) != len(questions):
            raise TokenomyError(f"got {len(images)} images for {len(questions)} questions")
        rows = [self.prompt_ids(q) for q in questions]
        labels = None
        if answers is not None:
            targets = [self.tokenizer(a + "<|im_end|>", add_special_tokens=False).input_ids for a in answers]
            labels = [[-100] * len(r) + t for r, t in zip(rows, targets)]
            rows = [r + t for r, t in zip(rows, targets)]
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        left = answers is None
        def padded(row, fill):  # noqa: E306
            filler = [fill] * (width - len(row))
            return filler + row if left else row + filler
        batch = {
            "input_ids": torch.tensor([padded(r, pad) for r in rows]),
            "attention_mask": torch.tensor([padded([1] * len(r), 0) for r in rows]),
            "pixel_values": torch.cat([self.crops(image) for image in images]),
        }
        if labels is not None:
            batch["labels"] = torch.tensor([padded(l, -100) for l in labels])
        return batch
