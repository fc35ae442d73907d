"""Registered methods, one per file, grouped by site. Importing this package registers them all."""

from tokenomy.methods import kv  # noqa: F401
