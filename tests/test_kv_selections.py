"""Which entries every KV method keeps, pinned: a refactor of the site must not change one kept entry.

Each method compresses the same left-padded batch on the tiny Llama (eager and SDPA, which take different paths
through the site); the kept positions of every row, layer and head are digested and compared with
``kv_selections.json``. When a change is meant to alter a method's choices, regenerate the file with
``TOKENOMY_PIN_SELECTIONS=1 pytest tests/test_kv_selections.py`` and say why in the commit.
"""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

import tokenomy

from conftest import tiny_llama
from test_kv_site import EVICTING

PINNED = Path(__file__).with_name("kv_selections.json")


def kept_positions(name: str, implementation: str) -> str:
    model = tiny_llama()
    model.set_attn_implementation(implementation)
    generator = torch.Generator().manual_seed(11)
    batch = torch.randint(3, 128, (2, 240), generator=generator)  # budgets beyond the 32-token windows
    mask = torch.ones_like(batch)
    batch[0, :9], mask[0, :9] = 0, 0
    cache = DynamicCache()
    with torch.no_grad(), tokenomy.apply(model, name, keep=0.3):
        model(batch, attention_mask=mask, past_key_values=cache)
    kept = []
    for layer in cache.layers:
        _, _, positions, valid = layer.padded()
        valid = torch.ones_like(positions, dtype=torch.bool) if valid is None else valid
        kept.append([[sorted(p[v].tolist()) for p, v in zip(rows, flags)] for rows, flags in zip(positions, valid)])
    return hashlib.sha256(json.dumps(kept).encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def pinned():
    if os.environ.get("TOKENOMY_PIN_SELECTIONS"):
        found = {f"{name}/{impl}": kept_positions(name, impl) for name in EVICTING for impl in ("eager", "sdpa")}
        PINNED.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
        pytest.skip("kv_selections.json regenerated: nothing to compare it with in this run")
    return json.loads(PINNED.read_text())


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("name", EVICTING)
def test_kept_entries_are_those_pinned(name, implementation, pinned):
    key = f"{name}/{implementation}"
    assert key in pinned, f"{key} has no pinned selection: regenerate {PINNED.name} (see this file's docstring)"
    assert kept_positions(name, implementation) == pinned[key], (
        f"{name} on {implementation} now keeps other entries than pinned; if intended, regenerate {PINNED.name}")
