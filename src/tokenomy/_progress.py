"""Progress bars for long work: on stderr, drawn only when stderr is a terminal (quiet in logs and CI),
and off whenever TQDM_DISABLE is set."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_bar(iterable=None, **options) -> tqdm:
    """A tqdm bar on stderr that disables itself when stderr is not a terminal or TQDM_DISABLE is set
    (``options`` go to tqdm)."""
    quiet = True if os.environ.get("TQDM_DISABLE") else None  # None: off unless a terminal
    return tqdm(iterable, file=sys.stderr, disable=quiet, dynamic_ncols=True, **options)
