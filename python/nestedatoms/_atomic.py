"""Atomic file writes: every file nestedatoms writes goes through :func:`atomic_path`.

The content is written to a temporary file in the destination's own folder (same file system,
so the rename cannot turn into a copy) and moved over the destination with ``os.replace``, an
atomic rename on POSIX and Windows.  Until that rename the destination keeps its previous
content; if the writer raises (or Ctrl-C arrives) the temporary file is removed and the
destination is untouched.  A SIGKILL can only leave a stray ``.<name>.*.tmp`` file beside it,
never a half-written destination.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager

__all__ = ["atomic_path"]


@contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    ``suffix`` is kept at the end of the temporary name, for writers that choose a format by
    the extension (matplotlib) or append one when it is missing (``np.savez``).  The file is
    flushed to disk (fsync) before the rename, so a power cut cannot leave the new name
    pointing at empty content.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}",
                               dir=folder)
    os.close(fd)
    try:
        yield tmp
        _fsync(tmp)
        # mkstemp creates the file private (0600): give it the permissions a plain open()
        # would have given it, as the file it replaces had.
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def _fsync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
