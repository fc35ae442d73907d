"""Files tokenomy writes get the permissions any other program's would: what the umask allows."""

from __future__ import annotations

import os
import tempfile


def follow_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open(path, "w")`` would have (temporary files and safetensors'
    writer create 0600 whatever the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: a failure leaves no partial output."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".tokenomy-", dir=directory)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        follow_umask(temporary)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
