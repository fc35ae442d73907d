"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL (`Qwen*VLForConditionalGeneration`).

Dynamic resolution: an image of ``(t, h, w)`` patches becomes ``t * h/2 * w/2`` language-model tokens, one per
2x2 block of patches (the merger concatenates the four — normalised — and maps them with an MLP). The ViT has
no [CLS]; its blocks attend within each image (Qwen2.5-VL: within windows, except in its full-attention
blocks, and in a window order the merger's output undoes). Positions are M-RoPE ``(t, h, w)``: kept tokens
keep theirs (``positions = "model"``), and after a shortened prefill the model's ``rope_deltas`` are set so
that decoding without explicit positions continues from the last one. Qwen3-VL adds deepstack features to the
first language-model layers at the visual positions: they are shortened with the prompt, and in-LLM methods
start after those layers.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

from tokenomy._validation import TokenomyError
from tokenomy.adapters.vlm.base import ImageTokens, VLMAdapter, query_rows, received_attention
from tokenomy.score.vision import ImageView


class QwenVLAdapter(VLMAdapter):
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL (see the module docstring)."""

    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
    positions = "model"

    def __init__(self, vlm):
        super().__init__(vlm)
        self.visual = vlm.model.visual
        self.layers = self.blocks = self.visual.blocks
        self.features_at = self.merger = self.visual.merger
        self.merge = self.config.vision_config.spatial_merge_size
        self.deepstack = len(getattr(self.config.vision_config, "deepstack_visual_indexes", None) or ())

    @property
    def first_in_llm_layer(self) -> int:
        """Qwen3-VL adds deepstack features after its first layers; tokens can leave only after those."""
        return max(1, self.deepstack)

    def capture(self, record: dict, layers: set[int]) -> list:
        """The merger's input, and for each asked block the queries/keys/values its attention projected (reused,
        not recomputed) with the segments and rotary tables it applied them with."""
        def features(module, args):
            record["features"] = args[0]

        def projections(index):
            def store(module, args, output):
                record.setdefault("qkv", {})[index] = output
            return store

        def segments(index):
            def store(module, args, kwargs):
                record.setdefault("segments", {})[index] = (kwargs["cu_seqlens"], kwargs["position_embeddings"])
            return store

        handles = [self.merger.register_forward_pre_hook(features)]
        for i in sorted(layers):
            attention = self.blocks[i].attn
            handles.append(attention.qkv.register_forward_hook(projections(i)))
            handles.append(attention.register_forward_pre_hook(segments(i), with_kwargs=True))
        return handles

    def _token_features(self, rows: Tensor) -> Tensor:
        """The merger's per-token input: each patch normalised, four patches side by side ``(tokens, 4 d)``."""
        norm = getattr(self.merger, "ln_q", None) or self.merger.norm
        width = rows.shape[-1] * self.merge**2
        if getattr(self.merger, "use_postshuffle_norm", False):
            return norm(rows.view(-1, width))
        return norm(rows).view(-1, width)

    def _project(self, x: Tensor) -> Tensor:
        mlp = getattr(self.merger, "mlp", None)
        if mlp is not None:
            return mlp(x)
        return self.merger.linear_fc2(self.merger.act_fn(self.merger.linear_fc1(x)))

    def _received(self, index: int, record: dict) -> Tensor:
        """Attention each patch receives in ViT block ``index`` ``(patches,)``, within its image (or window)."""
        projected = record["qkv"][index]
        segments, rope = record["segments"][index]
        attn = self.blocks[index].attn
        rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision
        length = projected.shape[0]
        q, k, _ = projected.reshape(length, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = rotate(q, k, *rope)
        out = torch.empty(length, device=projected.device)
        bounds = segments.tolist()
        for start, stop in zip(bounds[:-1], bounds[1:]):
            asked = start + query_rows(stop - start, False).to(projected.device)
            out[start:stop] = received_attention(q[asked].transpose(0, 1)[None].float(),
                                                 k[start:stop].transpose(0, 1)[None].float(), attn.scaling, False)[0]
        return out

    def _order(self, inputs: dict) -> Tensor | None:
        """Qwen2.5-VL's window order of the merged tokens, undone (None: already in raster order)."""
        if not hasattr(self.visual, "get_window_index"):
            return None
        return torch.argsort(torch.as_tensor(self.visual.get_window_index(inputs["image_grid_thw"])[0]))

    def images(self, record: dict, inputs: dict) -> list[ImageTokens]:
        grids = inputs["image_grid_thw"].tolist()
        group = self.merge**2
        tokens = self._token_features(record["features"])
        order = self._order(inputs)
        if order is not None:
            tokens = tokens[order.to(tokens.device)]
        received: dict[int, Tensor] = {}

        def per_token(layer: int) -> Tensor:
            if layer not in received:
                scores = self._received(layer, record).view(-1, group).sum(-1)
                received[layer] = scores if order is None else scores[order.to(scores.device)]
            return received[layer]

        images, start = [], 0
        for t, h, w in grids:
            if t != 1:
                raise TokenomyError("tokenomy reduces images, not videos (image_grid_thw with t > 1)")
            n = h * w // group
            rows = slice(start, start + n)
            start += n
            view = ImageView(tokens[rows], ((h // self.merge, w // self.merge),), len(self.blocks),
                             lambda layer, rows=rows: per_token(layer)[rows])
            images.append(ImageTokens(view, torch.arange(n), self._project))
        return images

    def shorten_positions(self, positions: Tensor, valid: Tensor) -> Tensor:
        if positions.dim() == 3 and positions.shape[0] == 4:  # generate's text row: contiguous again
            positions = positions.clone()
            positions[0] = (valid.long().cumsum(-1) - 1).clamp_min(0).to(positions.device)
        return positions

    def after_prefill(self, positions: Tensor | None, valid: Tensor) -> None:
        if positions is None:
            return
        spatial = positions[-3:].to(valid.device)
        last = torch.where(valid, spatial.amax(0), -1).amax(-1, keepdim=True)  # (b, 1)
        self.vlm.model.rope_deltas = last + 1 - valid.shape[1]

    def decoder_token_kwargs(self) -> tuple[str, ...]:
        return ("deepstack_visual_embeds", "visual_pos_masks") if self.deepstack else ()

    def shorten_token_kwarg(self, name: str, value, columns: Tensor, valid: Tensor, kwargs: dict):
        if name == "visual_pos_masks":
            return value.gather(1, columns.to(value.device)) & valid.to(value.device)
        visual = kwargs["visual_pos_masks"]
        kept = torch.zeros_like(visual)
        rows = torch.arange(columns.shape[0], device=visual.device).unsqueeze(1).expand_as(columns)
        kept[rows[valid], columns.to(visual.device)[valid]] = True
        survivors = kept[visual]  # the visual tokens in order, which stay
        return [features[survivors.to(features.device)] for features in value]
