"""What a VLM family adapter provides, and the pieces families share.

The visual site (`tokenomy.sites.vision`) lets a VLM run its own code — vision tower, projector, placeholder
merging, positions (M-RoPE included), masks — and reduces tokens where they enter the language model and
between its layers. All it needs from a family is one `VLMAdapter` subclass in its own file:

* ``capture``: hooks on the family's vision modules that record, during the model's own forward, what
  methods read — the projector's per-token input (`ImageView.features`), and the inputs of the ViT layers
  whose attention a method asks for;
* ``images``: that record, cut into one `ImageTokens` per image in the order the model fills its placeholders:
  the `ImageView` (tokens, crops and their grids, thumbnail, [CLS] or its substitute), which placeholder
  carries which token, and the projection of new (merged) tokens into the language model's embeddings;
* ``placeholders``: which ``input_ids`` are image placeholders (separators included);
* ``positions``: ``"compact"`` — a shortened prompt is numbered afresh, like a prompt that never had the
  dropped tokens (1-D RoPE families) — or ``"model"``: kept tokens keep the positions the model gave them
  (M-RoPE's ``(t, h, w)``), and ``after_prefill`` tells the model where decoding continues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenomy._validation import TokenomyError
from tokenomy.score.vision import ImageView


@dataclass
class ImageTokens:
    """One image of a forward, as the visual site needs it.

    view: what methods score (`ImageView`).
    slots: ``(p,)`` for each of the image's placeholders in ``input_ids``, in order: the row of
        ``view.features`` it carries, or -1 for a separator (LLaVA-NeXT's row newlines).
    project: ``(k, d)`` rows in ``view.features``'s space -> ``(k, d_llm)`` embeddings, as the model's own
        projector maps them (to place merged tokens).
    """

    view: ImageView
    slots: Tensor
    project: Callable[[Tensor], Tensor]

    @property
    def placeholders(self) -> int:
        return self.slots.numel()


class VLMAdapter:
    """One family of HF vision-language models (see the module docstring). Subclasses set ``model_types``
    (the ``config.model_type`` values they read) and implement ``capture`` and ``images``."""

    model_types: tuple[str, ...] = ()
    positions: str = "compact"
    layers: nn.ModuleList  # the vision tower's encoder layers (ViT layer indices count these)
    features_at: nn.Module  # the module whose first input holds the per-token features (the projector's)
    attention_name = "self_attn"  # each ViT layer's attention module
    has_cls: bool = False  # the tower's attention comes from a [CLS] token (else the substitute, `ImageView`)
    one_token_per_patch: bool = False  # each ViT patch becomes one LLM token, in order (what ToMe needs)
    first_in_llm_layer: int = 1  # the first decoder layer before which tokens may leave

    def __init__(self, vlm: nn.Module):
        self.vlm = vlm
        self.config = vlm.config

    # -- what a family defines --------------------------------------------------------------------------
    def images(self, record: dict, inputs: dict) -> list[ImageTokens]:
        """The images of the forward whose vision modules filled ``record`` (``inputs``: its keyword arguments)."""
        raise NotImplementedError

    def capture(self, record: dict, layers: set[int]) -> list:
        """Register hooks filling ``record`` during a forward — the per-token features (``"features"``), the
        queries and keys ViT ``layers`` compute (``"queries"``, ``"keys"``: reused, not recomputed) and whatever
        `extra_capture` adds; return their handles."""
        def features(module, args):
            record["features"] = args[0]

        def store(kind, layer):
            def hook(module, args, output):
                record.setdefault(kind, {})[layer] = output
            return hook

        handles = [self.features_at.register_forward_pre_hook(features), *self.extra_capture(record)]
        for layer in sorted(layers):
            queries, keys, _, _ = self.attention_parts(layer)
            handles.append(queries.register_forward_hook(store("queries", layer)))
            handles.append(keys.register_forward_hook(store("keys", layer)))
        return handles

    def attention_parts(self, layer: int) -> tuple[nn.Module, nn.Module, int, float]:
        """ViT ``layer``'s attention: the modules whose outputs are its queries and keys ``(crops, n, heads * d)``
        (after q/k norms where the tower has them), its number of heads and its softmax scale."""
        attention = getattr(self.layers[layer], self.attention_name)
        normed = getattr(attention, "q_norm", None) is not None and not isinstance(attention.q_norm, nn.Identity)
        suffix = "norm" if normed else "proj"
        queries, keys = getattr(attention, f"q_{suffix}"), getattr(attention, f"k_{suffix}")
        return queries, keys, attention.num_heads, attention.scale

    def extra_capture(self, record: dict) -> list:
        """Hooks for what else a family's images need (its [CLS] features, a patch mask)."""
        return []

    def tower_attention(self, record: dict, layer: int, rows: slice, valid: Tensor | None = None) -> Tensor:
        """Attention each patch of the crops ``rows`` receives in ViT ``layer`` ``(crops, patches)``: from [CLS]
        where the tower has one, else the mean over the crop's (``valid``) patches (`received_attention`),
        from the queries and keys the tower computed."""
        _, _, heads, scale = self.attention_parts(layer)
        keys = record["keys"][layer][rows]
        asked = query_rows(keys.shape[1], self.has_cls).to(keys.device)
        q, k = (t.view(*t.shape[:2], heads, -1).transpose(1, 2).float()
                for t in (record["queries"][layer][rows][:, asked], keys))
        return received_attention(q, k, scale, self.has_cls, valid, asked)

    # -- shared defaults ----------------------------------------------------------------------------------
    @property
    def image_token_ids(self) -> tuple[int, ...]:
        return (self.config.image_token_id,)

    def placeholders(self, input_ids: Tensor) -> Tensor:
        """``(b, L)`` True at every image placeholder (separators included)."""
        return torch.isin(input_ids, torch.tensor(self.image_token_ids, device=input_ids.device))

    def decoder_token_kwargs(self) -> tuple[str, ...]:
        """Extra keyword arguments of the language model that hold something per token (shortened with the
        prompt by `shorten_token_kwarg`)."""
        return ()

    def shorten_token_kwarg(self, name: str, value, columns: Tensor, valid: Tensor, kwargs: dict):
        """``value`` of the language model's argument ``name`` for the kept ``columns`` ``(b, W)``."""
        raise NotImplementedError(name)

    def shorten_positions(self, positions: Tensor, valid: Tensor) -> Tensor:
        """The model's position ids of the kept tokens ``(..., b, W)`` (``positions = "model"``), as the
        language model should read them; ``valid`` ``(b, W)`` marks real tokens."""
        return positions

    def prefill_mask(self, inputs: dict, kwargs: dict, columns: Tensor, valid: Tensor):
        """The language model's attention mask for a shortened prompt, where the family builds it itself from
        the caller's inputs (``inputs``: the model's keyword arguments); None: the site restricts the mask it
        was given to the kept ``columns``."""
        return None

    def after_prefill(self, positions: Tensor | None, valid: Tensor) -> None:
        """Called after a prompt was shortened with ``positions = "model"``: the kept tokens' position ids and
        which of the ``(b, W)`` columns are real; the family records where decoding continues."""

    def merging_layers(self) -> tuple[nn.ModuleList, Callable, int, int, int]:
        """What ToMe patches: the ViT layers, their `merging_forward`, how many of them the model reads, crops
        per image and protected leading tokens ([CLS]); families without one refuse it."""
        raise TokenomyError(f"{type(self).__name__} does not support merging inside the vision tower")


def query_rows(length: int, has_cls: bool, queries: int = 128) -> Tensor:
    """The patches whose attention rows `received_attention` reads: [CLS] alone, or at most ``queries`` patches
    evenly strided over the crop (every one costs a full attention row)."""
    return torch.zeros(1, dtype=torch.long) if has_cls else torch.arange(0, length, max(1, -(-length // queries)))


def received_attention(q: Tensor, k: Tensor, scale: float, has_cls: bool, valid: Tensor | None = None,
                       rows: Tensor | None = None) -> Tensor:
    """Attention each patch receives in a ViT layer, averaged over heads: ``(c, n)`` from the queries of
    `query_rows` ``(c, heads, r, d)`` and every key ``(c, heads, [1 +] n, d)``.

    With a [CLS] token (the first row): [CLS]'s softmax row without its own column (rows sum to at most 1).
    Without: the mean over the crop's strided (and ``valid``, ``(c, n)``) patches as queries — the substitute
    for towers without [CLS] (SigLIP, Qwen's and Idefics3's ViTs) — an estimate from a subset of the queries
    (``rows``: which ones), since every patch costs a full attention row."""
    weights = (q @ k.transpose(-1, -2)) * scale  # (c, h, r, n)
    if has_cls:
        return torch.softmax(weights, dim=-1)[:, :, 0, 1:].mean(dim=1)
    if valid is not None and bool(valid.all()):
        valid = None
    if valid is not None:
        weights = weights.masked_fill(~valid[:, None, None, :].to(q.device), -torch.inf)
    weights = torch.softmax(weights, dim=-1)
    if valid is None:
        return weights.mean(dim=(1, 2))
    asking = valid[:, rows].to(q.device)  # padded patches do not ask
    weights = weights * asking[:, None, :, None]
    return weights.sum(dim=2).mean(dim=1) / asking.sum(-1, keepdim=True).clamp_min(1)


def pool_to_tokens(per_patch: Tensor, rows: int, cols: int, factor: int) -> Tensor:
    """Sum a per-patch quantity ``(c, rows * cols)`` over the ``factor x factor`` windows that become one
    token each -> ``(c, (rows // factor) * (cols // factor))``, tokens in raster order."""
    c = per_patch.shape[0]
    grid = per_patch.view(c, 1, rows, cols)
    return F.avg_pool2d(grid, factor).flatten(1) * factor * factor


def merging_forward(layer: nn.Module, state: dict, merge: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]):
    """A forward for one CLIP/SigLIP encoder layer that merges tokens between attention and MLP (ToMe's place).

    ``merge(hidden, keys, size) -> (hidden, size)`` gets the residual stream after attention, the layer's
    keys averaged over heads (the matching metric) and the token sizes ``(b, n, 1)`` kept in
    ``state["size"]`` (None: all ones). Attention adds ``log(size)`` to its logits (proportional attention).
    A ``state["finish"]`` the merge leaves is applied to the layer's output (ToMe's unmerge).
    """
    attn = layer.self_attn

    def attend(hidden_states: Tensor, bias: Tensor | None, attention_mask: Tensor | None = None, *args, **kwargs):
        b, n, _ = hidden_states.shape
        x = layer.layer_norm1(hidden_states)
        if bias is not None:
            attention_mask = bias if attention_mask is None else attention_mask + bias
        out, _ = attn(hidden_states=x, attention_mask=attention_mask, **kwargs)
        return hidden_states + out, attn.k_proj(x).view(b, n, attn.num_heads, attn.head_dim).mean(dim=2)

    return merging(state, merge, attend, lambda hidden: hidden + layer.mlp(layer.layer_norm2(hidden)))


def merging(state: dict, merge: Callable, attend: Callable, feed_forward: Callable):
    """The layer forward `merging_forward` describes, from a family's two halves: ``attend(hidden_states,
    bias, *args, **kwargs) -> (hidden after attention, keys averaged over heads)``, with ``bias`` the
    ``(b, 1, 1, n)`` proportional-attention term (None while every size is one), and ``feed_forward(hidden)``."""
    def forward(hidden_states: Tensor, *args, **kwargs) -> Tensor:
        b, n, _ = hidden_states.shape
        size = state["size"] if state["size"] is not None else hidden_states.new_ones(b, n, 1)
        bias = size.log().transpose(1, 2).unsqueeze(1).to(hidden_states.dtype) if bool((size != 1).any()) else None
        hidden, keys = attend(hidden_states, bias, *args, **kwargs)  # a token of size s counts s times
        hidden, state["size"] = merge(hidden, keys, size)
        out = feed_forward(hidden)
        finish = state.pop("finish", None)
        return out if finish is None else finish(out)

    return forward


def dense_weights(module: nn.Module) -> int:
    """Parameters of the 2-D weight matrices in ``module`` (one multiply-add each per token)."""
    return sum(p.numel() for n, p in module.named_parameters() if n.endswith("weight") and p.ndim == 2)
