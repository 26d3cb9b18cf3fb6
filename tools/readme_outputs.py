"""Regenerate the program outputs shown in README.md, so they cannot go stale.

Each generated block in the README sits between two markers,

    <!-- generated:NAME (python tools/readme_outputs.py) -->
    ...
    <!-- /generated:NAME -->

and this script reruns what produced it and replaces the text in between:

* ``demo``: ``nestedatoms demo --quiet --no-plots`` (its timing and recovery lines), with the
  wall time and the machine's CPU count and load;
* ``pbmc``: ``tools/pbmc_pseudodonors.py`` (the walk-through on scanpy's pbmc68k_reduced with 14
  pseudo-donors), whose plots go to ``docs/img/``.

    python tools/readme_outputs.py [--only demo|pbmc] [--readme README.md]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(BLOCKS), action="append")
    parser.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    args = parser.parse_args(argv)
    with open(args.readme) as fh:
        text = fh.read()
    for name in args.only or sorted(BLOCKS):
        text = replace_block(text, name, BLOCKS[name]())
        print(f"regenerated block {name!r}")
    with open(args.readme, "w") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
