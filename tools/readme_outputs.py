"""Regenerate the program outputs shown in the README and the docs, so they cannot go stale.

Each generated block sits between two markers,

    <!-- generated:NAME (python tools/readme_outputs.py) -->
    ...
    <!-- /generated:NAME -->

and this script reruns what produced it and replaces the text in between:

* ``demo`` (README.md): ``nestedatoms demo --quiet --no-plots`` (its timing and recovery
  lines), with the wall time and the machine's CPU count and load;
* ``pbmc`` (docs/walkthrough.md): ``tools/pbmc_pseudodonors.py`` (the walk-through on scanpy's
  pbmc68k_reduced with 14 pseudo-donors), whose plots go to ``docs/img/``.

    python tools/readme_outputs.py [--only demo|pbmc]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the generated block ``name`` replaced by ``body`` (markers kept)."""
    pattern = re.compile(
        r"(<!-- generated:%s [^\n]*-->\n)(.*?)(<!-- /generated:%s -->)" % (
            re.escape(name), re.escape(name)), re.S)
    if not pattern.search(text):
        raise KeyError(f"README has no generated block {name!r} (markers "
                       f"'<!-- generated:{name} ...-->' and '<!-- /generated:{name} -->').")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(3), text,
                       count=1)


def _machine() -> str:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpus} CPUs, load average {load:.1f} at the start"


def demo_block() -> str:
    machine = _machine()
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "nestedatoms.cli", "demo", "--quiet",
                          "--no-plots"], capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - start
    keep = [line for line in out.splitlines()
            if line.startswith(("Fit in", "  individuals", "  cells"))]
    return (f"`nestedatoms demo --quiet --no-plots` on this machine ({machine}) took "
            f"{wall:.0f} s wall and printed:\n\n```\n" + "\n".join(keep) + "\n```")


def pbmc_block() -> str:
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import pbmc_pseudodonors
    from contextlib import redirect_stdout

    machine = _machine()
    buf = io.StringIO()
    with redirect_stdout(buf):
        pbmc_pseudodonors.report(plots=os.path.join(ROOT, "docs", "img"))
    text = buf.getvalue().split("\nplots:")[0].rstrip()
    return (f"`python tools/pbmc_pseudodonors.py` ({machine}):\n\n```\n" + text + "\n```")


BLOCKS = {"demo": demo_block, "pbmc": pbmc_block}
# the file (relative to the repository) that shows each block
FILES = {"demo": "README.md", "pbmc": os.path.join("docs", "walkthrough.md")}


def _write_atomically(path: str, text: str) -> None:
    # a temporary file beside the target, then a rename: an interrupted run leaves it intact
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".readme_outputs.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(BLOCKS), action="append")
    args = parser.parse_args(argv)
    for name in args.only or sorted(BLOCKS):
        path = os.path.join(ROOT, FILES[name])
        with open(path) as fh:
            text = fh.read()
        _write_atomically(path, replace_block(text, name, BLOCKS[name]()))
        print(f"regenerated block {name!r} in {FILES[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
