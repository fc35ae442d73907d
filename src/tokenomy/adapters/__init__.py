"""Model-family adapters: `lm` for decoder-only language models, `vlm` one file per vision-language family."""
