"""The registered methods: one recipe (score, budget, select, site) per file, grouped by site.

Importing this package registers them all."""

from tokenomy.recipes import kv, prompt, vision  # noqa: F401
