"""Scores for visual tokens inside the language model: how much the text attends to each of them.

Model-agnostic: the in-LLM site fills a `DecoderView` at the decoder layer where a method drops tokens; the
attention it exposes is the previous layer's, recomputed for the few query rows a score asks for (a side pass
beside the model's own fused attention, which never materialises its attention matrix). Higher = keep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import Tensor


@dataclass
class DecoderView:
    """One prefill at one decoder layer, as an in-LLM method sees it (rows left-padded: real tokens last).

    visual: ``(b, n)`` True at the visual tokens still in the sequence.
    image: ``(b, n)`` index of the image each visual token shows (images in the batch's order), -1 elsewhere.
    valid: ``(b, n)`` False at padding.
    hidden: ``(b, n, d)`` the layer's input hidden states.
    layer, num_layers: the decoder layer the tokens are dropped before, and the decoder's depth.
    grid: ``(b, n, 3)`` (crop, row, col) of each visual token in its image's token grids, -1 elsewhere.
    attention_fn: query positions ``(b, q)`` -> ``(b, heads, q, n)`` softmax attention of those queries in the
        previous layer (causal; padding gets zero).
    """

    visual: Tensor
    image: Tensor
    valid: Tensor
    hidden: Tensor
    layer: int
    num_layers: int
    grid: Tensor
    attention_fn: Callable[[Tensor], Tensor] = field(repr=False)
    _memo: dict = field(default_factory=dict, repr=False)

    def remember(self, key, compute: Callable[[], Tensor]) -> Tensor:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def instruction(self) -> tuple[Tensor, Tensor]:
        """Positions ``(b, q)`` of the text tokens after each row's last visual token (the question and the
        answer prompt), and which of the ``q`` slots are real ``(b, q)`` (rows have different counts)."""
        def compute():
            b, n = self.visual.shape
            index = torch.arange(n, device=self.visual.device).expand(b, n)
            last_visual = torch.where(self.visual, index, -1).amax(dim=1, keepdim=True)
            after = self.valid & ~self.visual & (index > last_visual)
            count = after.sum(1)
            q = max(int(count.max()), 1)
            order = torch.where(after, index, n + index).argsort(dim=1)[:, :q]  # the chosen first, in order
            real = torch.arange(q, device=index.device) < count.unsqueeze(1)
            fallback = torch.full_like(order, n - 1)  # a row with no text after its image asks its last token
            return torch.where(real, order, fallback), real | (count == 0).unsqueeze(1)
        return self.remember("instruction", compute)

    def attention(self, queries: Tensor) -> Tensor:
        return self.attention_fn(queries)


class DecoderScore(Protocol):
    """Maps a `DecoderView` to scores ``(b, n)``; only the visual tokens' entries are read."""

    def __call__(self, view: DecoderView) -> Tensor: ...


@dataclass
class LastQueryAttention:
    """Attention the last token (the one about to answer) pays each token, averaged over heads.

    FastV's score (Chen et al., ECCV 2024, arXiv:2403.06764) and PyramidDrop's (Xing et al., 2024,
    arXiv:2410.17247, the last instruction token)."""

    def __call__(self, view: DecoderView) -> Tensor:
        b, n = view.visual.shape
        last = torch.full((b, 1), n - 1, device=view.visual.device)
        return view.remember("last", lambda: view.attention(last).mean(dim=1)[:, 0])


@dataclass
class InstructionAttention:
    """Attention the text after the image (question, answer prompt) pays each token, averaged over those
    queries and the heads: the task relevance ToDRE's second stage reads (arXiv:2505.18757) and ATP-LLaVA's
    cross-modal importance (Ye et al., CVPR 2025, arXiv:2412.00447)."""

    def __call__(self, view: DecoderView) -> Tensor:
        def compute():
            queries, real = view.instruction()
            probs = view.attention(queries).mean(dim=1)  # (b, q, n)
            weights = real.to(probs.dtype).unsqueeze(-1)
            return (probs * weights).sum(1) / weights.sum(1).clamp_min(1)
        return view.remember("instruction-attention", compute)


@dataclass
class RaterAttention:
    """SparseVLM's score (Zhang et al., ICML 2025, arXiv:2410.04417): the text tokens relevant to the image
    rate the visual tokens. Raters are the instruction tokens whose attention to the visual tokens is at least
    their mean over the instruction; a visual token's score is the raters' mean attention to it."""

    def __call__(self, view: DecoderView) -> Tensor:
        def compute():
            queries, real = view.instruction()
            probs = view.attention(queries).mean(dim=1)  # (b, q, n)
            to_visual = (probs * view.visual.unsqueeze(1)).sum(-1)  # (b, q)
            realf = real.to(probs.dtype)
            mean = (to_visual * realf).sum(1, keepdim=True) / realf.sum(1, keepdim=True).clamp_min(1)
            raters = (real & (to_visual >= mean)).to(probs.dtype).unsqueeze(-1)
            return (probs * raters).sum(1) / raters.sum(1).clamp_min(1)
        return view.remember("rater-attention", compute)
