"""Write files so that no reader ever sees half of one: packs, checkpoints, results."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path: str | Path):
    """Yield a binary file that replaces ``path`` only once fully written and flushed to disk.

    The data goes to a temporary file in the same folder, then ``os.replace`` swaps it in:
    readers see the old file or the new one, never a mix. On any error the temporary file is
    removed and the old file is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
