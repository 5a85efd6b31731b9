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
    removed and the old file is left as it was. The file gets the permissions a plain ``open``
    would give (0666 less the umask), not the owner-only mode of temporary files, so a pack
    written into a shared data folder can be read by the whole class.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """Return the process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
