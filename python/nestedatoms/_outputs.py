"""Checking the command line's output paths before any work is done.

Every output file is checked before the input is read or the fit starts, so an unwritable
``--model`` path cannot lose a fit that took an hour: its folder must exist (or be creatable,
for a plot folder) and accept a new file, the path must not be a folder, no two outputs may
be the same file, and an existing file is refused unless ``--force`` is given (the convention
of gzip, cp -n and most bioinformatics tools that refuse to clobber results).  With
``--force`` the existing file is replaced atomically (``_atomic``), so even writing over the
input is safe: until the new file is complete, the old one stays as it was.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["OutputError", "check_outputs"]


class OutputError(ValueError):
    """An output path that cannot or may not be written (the CLI exits with status 2)."""


def _writable_folder(folder: str, label: str, path: str, create: bool) -> None:
    probe = folder
    while create and not os.path.exists(probe):       # the nearest existing ancestor
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise OutputError(f"{label} {path!r}: folder {probe!r} does not exist; create it "
                          f"first.")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".nestedatoms-write-test.", dir=probe)
    except OSError as exc:
        raise OutputError(f"{label} {path!r}: cannot write in {probe!r} "
                          f"({exc.strerror or exc}).") from None
    os.close(fd)
    os.remove(tmp)


def check_outputs(outputs, force: bool) -> None:
    """Check ``outputs``, a list of ``(label, path)`` pairs of files to be written.

    A file inside a folder that does not exist yet is allowed when ``label`` ends in
    ``(folder created)``: the folder's nearest existing ancestor must then be writable.
    """
    seen = {}
    for label, path in outputs:
        create = label.endswith("(folder created)")
        label = label.replace(" (folder created)", "")
        real = os.path.realpath(path)
        if real in seen:
            raise OutputError(f"{label} {path!r} is the same file as {seen[real]}; give each "
                              f"output its own path.")
        seen[real] = f"{label} {path!r}"
        if os.path.isdir(path):
            raise OutputError(f"{label} {path!r} is a folder, not a file; give a file name.")
        _writable_folder(os.path.dirname(os.path.abspath(path)), label, path, create)
        if os.path.exists(path) and not force:
            raise OutputError(f"{label} {path!r} exists; pass --force to replace it (the new "
                              f"file is written beside it and renamed over it only once "
                              f"complete).")
