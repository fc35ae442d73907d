"""The worked example of docs/design.md ("Adding a method in 20 lines") runs as written on a tiny model."""

import re
from pathlib import Path

import torch

import tokenomy
from tokenomy import registry

from conftest import tiny_llama

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def test_the_documented_method_registers_and_honours_its_budget():
    blocks = re.findall(r"```python\n(.*?)```", DESIGN.read_text(), re.S)
    definition, usage = blocks[0], blocks[1]
    namespace: dict = {}
    try:
        exec(definition, namespace)
        assert tokenomy.get("value-norm").site == "kv-cache"
        model = tiny_llama()
        inputs = {"input_ids": torch.randint(3, 128, (1, 40)), "attention_mask": torch.ones(1, 40, dtype=torch.long)}
        namespace.update(model=model, inputs=inputs)
        exec(usage, namespace)
    finally:
        registry._REGISTRY.pop("value-norm", None)
    stats = namespace["session"].stats
    assert stats.entries_kept / stats.entries_seen == 0.25 and namespace["out"].shape[1] > 40
