"""File helpers shared by every layer: atomic writes (no half-written caches or checkpoints)."""
from __future__ import annotations

import os
import uuid
from typing import IO, Callable


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` via ``write(binary_file)`` into a temp file beside it, then ``os.replace``.

    Readers never see a partial file; on error the temp file is removed and ``path`` is untouched.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp_path = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp_path, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
