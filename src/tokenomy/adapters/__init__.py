"""Adapters to transformers' objects: `lm` for decoder-only language models, `vlm` one file per vision-language
family, `caches` for HF's KV caches."""
