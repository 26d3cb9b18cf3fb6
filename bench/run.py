"""Benchmark suite of nestedatoms (issue 4): prints a table of every performance figure.

    python bench/run.py            # the full figures (~10-20 minutes on 2 cores)
    python bench/run.py --quick    # small sizes, < 1 minute: checks the benchmarks run (CI)

Every measurement runs in a fresh interpreter (bench_*.py, JSON on stdout); ratios are taken
between measurements interleaved in the same process, so that a shared machine's load hits both
sides alike.  numpy's matmul reference runs with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset so
OpenBLAS picks its best kernel for this CPU; it is also reported with the environment as set.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_common as bc  # noqa: E402

UNSET_OPENBLAS = {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}

FULL = dict(kernel_cells=1_000_000, kernel_groups=982, kernel_repeat=5,
            ref_cells=100_000, ref_groups=100, ref_repeat=3,
            sk_cells=1_000_000, sk_repeat=2,
            onek1k=["--groups", "982", "--cells", "1270000"], matmul_n=2000, matmul_repeat=5)
QUICK = dict(kernel_cells=20_000, kernel_groups=20, kernel_repeat=1,
             ref_cells=4_000, ref_groups=10, ref_repeat=1,
             sk_cells=4_000, sk_repeat=1,
             onek1k=["--groups", "20", "--cells", "10000", "--max-iter", "5", "--sweeps", "1"],
             matmul_n=400, matmul_repeat=1)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=HERE, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=HERE, timeout=10).stdout
        return out.stdout.strip() + (" (+ uncommitted changes)" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def kernel_name(blas: list) -> str:
    return ", ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')})"
                     for b in blas) or "none"


def fmt_pass(ok) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 1 minute); for CI")
    ap.add_argument("--json", help="also write the raw results to this file")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["kernel", "reference", "sklearn", "onek1k"],
                    help="leave out some measurements")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    raw = {"command": "python bench/run.py " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": f"{cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()}",
           "commit": git_commit(), "load_before": load(),
           "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    from nestedatoms._config import config

    core = config()["core"]
    raw["core"] = {k: core.get(k) for k in ("isa", "module", "installed_isas", "openmp",
                                             "compiler", "eigen")}

    import importlib.util

    if "sklearn" not in args.skip and importlib.util.find_spec("sklearn") is None:
        print("scikit-learn is not installed (pip install scikit-learn): skipping that figure",
              file=sys.stderr)
        args.skip.append("sklearn")
    jobs = {
        "matmul_env_as_set": (["bench_matmul.py", "--n", str(cfg["matmul_n"]), "--repeat",
                               str(cfg["matmul_repeat"])], None),
        "kernel": (["bench_kernel.py", "--cells", str(cfg["kernel_cells"]), "--groups",
                    str(cfg["kernel_groups"]), "--repeat", str(cfg["kernel_repeat"]),
                    "--n-matmul", str(cfg["matmul_n"])], UNSET_OPENBLAS),
        "reference": (["bench_sweep.py", "--what", "reference", "--cells", str(cfg["ref_cells"]),
                       "--groups", str(cfg["ref_groups"]), "--repeat", str(cfg["ref_repeat"])],
                      None),
        "sklearn": (["bench_sweep.py", "--what", "sklearn", "--cells", str(cfg["sk_cells"]),
                     "--repeat", str(cfg["sk_repeat"])], None),
        "onek1k": (["bench_onek1k.py", "--threads", "2", *cfg["onek1k"]], None),
    }
    # The cohort is simulated by one process and fitted by another, so the fit's peak resident
    # memory is its own (simulating allocates more than the data it returns).  Nothing is kept.
    import tempfile

    tmpdir = tempfile.TemporaryDirectory(prefix="nestedatoms-bench-")
    cohort = os.path.join(tmpdir.name, "cohort.npz")
    jobs["onek1k_data"] = (["bench_onek1k.py", *cfg["onek1k"], "--make-data", cohort], None)
    jobs["onek1k"] = (jobs["onek1k"][0] + ["--data", cohort], None)
    jobs = {k: jobs[k] for k in ["matmul_env_as_set", "kernel", "reference", "sklearn",
                                 "onek1k_data", "onek1k"]}
    errors = {}
    for name, (cmd, env) in jobs.items():
        if name in args.skip or (name == "onek1k_data" and "onek1k" in args.skip):
            continue
        try:
            raw[name] = bc.run_json(cmd, env=env, timeout=3600)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            errors[name] = str(exc)
            print(f"{name}: FAILED\n{exc}", file=sys.stderr)
    tmpdir.cleanup()
    raw["load_after"] = load()
    raw["wall_s"] = time.perf_counter() - t_start

    raw["errors"] = errors
    rows = figures(raw)
    print_report(raw, rows, quick=args.quick)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(raw, fh, indent=1)
    return 1 if errors else 0


def figures(raw: dict) -> list:
    """(figure, target, measured, pass) rows."""
    rows = []
    k = raw.get("kernel")
    if k:
        t1, t2 = k["threads"].get("1"), k["threads"].get("2")
        for t, r in (("1", t1), ("2", t2)):
            if r:
                rows.append((f"Cell step, {t} thread{'s' if t != '1' else ''}: share of numpy "
                             f"matmul (N = {k['cells']:,}, p = {k['p']}, L = {k['L']})",
                             ">= 50%",
                             f"{100 * r['fraction_of_matmul']:.0f}% ({r['cell_step_gflops']:.1f}"
                             f" of {r['matmul_gflops']:.1f} GFLOP/s; {r['cell_step_s']:.3f} s; "
                             f"median ratio {100 * r['fraction_median']:.0f}%)",
                             r["fraction_of_matmul"] >= 0.5))
        if t1 and t2:
            scale = t1["cell_step_s"] / t2["cell_step_s"]
            got = t2.get("cores_obtained")
            rows.append(("Cell step thread scaling, 1 -> 2 threads", ">= 1.8x",
                         f"{scale:.2f}x (numpy matmul: "
                         f"{t2['matmul_gflops'] / t1['matmul_gflops']:.2f}x"
                         + (f"; the 2 threads obtained {got:.2f} cores of CPU time, 1 thread "
                            f"{t1['cores_obtained']:.2f}" if got is not None else "") + ")",
                         scale >= 1.8))
    o = raw.get("onek1k")
    if o:
        shape = f"J = {o['n_groups']}, N = {o['n_cells']:,}, p = {o['p']}, q = {o['q']}, " \
                f"K = L = {o['L']}"
        rows.append((f"OneK1K-shaped sweep, 2 threads ({shape})", "<= 1.5 s",
                     f"{o['sweep_best_s']:.2f} s (median {o['sweep_median_s']:.2f} s; "
                     f"+ ELBO {o['elbo_s']:.3f} s)", o["sweep_best_s"] <= 1.5))
        rows.append(("OneK1K-shaped fit to convergence, 1 restart, 2 threads", "<= 300 s",
                     f"{o['fit_s']:.0f} s ({o['n_iter']} sweeps, "
                     f"{'converged' if o['converged'] else 'NOT converged'})",
                     o["fit_s"] <= 300 and o["converged"]))
        rows.append(("OneK1K-shaped fit, peak resident memory (float64)", "<= 1.5 GB",
                     f"{o['peak_rss_mb'] / 1024:.2f} GiB ({o['peak_rss_mb']:.0f} MiB; data "
                     f"alone {o['peak_rss_data_mb']:.0f} MiB)",
                     o["peak_rss_mb"] * 2**20 <= 1.5 * 2**30))
    r = raw.get("reference")
    if r:
        for t, v in r["threads"].items():
            rows.append((f"Sweep vs NumPy reference, {t} thread{'s' if t != '1' else ''} "
                         f"(N = {r['cells']:,}, p = {r['p']}, L = {r['L']}, K = {r['K']})",
                         ">= 5x" if t == "1" else "report",
                         f"{v['speedup']:.1f}x ({v['numpy_sweep_s']:.2f} s / "
                         f"{v['cpp_sweep_s']:.3f} s)",
                         v["speedup"] >= 5 if t == "1" else None))
    s = raw.get("sklearn")
    if s:
        for t, v in s["threads"].items():
            rows.append((f"Flat sweep vs sklearn BayesianGaussianMixture iteration, {t} "
                         f"thread{'s' if t != '1' else ''} (K = 1, N = {s['cells']:,}, "
                         f"p = {s['p']}, L = {s['L']})",
                         ">= 10x" if t == "2" else "report",
                         f"{v['speedup']:.1f}x ({v['sklearn_iteration_s']:.2f} s / "
                         f"{v['cpp_sweep_s']:.3f} s)",
                         v["speedup"] >= 10 if t == "2" else None))
    return rows


def print_report(raw: dict, rows: list, quick: bool) -> None:
    mm = raw.get("matmul_env_as_set", {"blas": [], "gflops": {}, "n": 0})
    k = raw.get("kernel")
    note = " (--quick: reduced sizes, figures not comparable)" if quick else ""
    print(f"# nestedatoms benchmark{note}")
    print()
    print(f"* command: `{raw['command']}` (commit {raw['commit']}, {raw['date']})")
    print(f"* machine: {raw['machine']}; load average before {raw['load_before']}, after "
          f"{raw['load_after']} (a shared machine inflates every time; ratios are taken within "
          f"one process)")
    c = raw["core"]
    print(f"* core: {c.get('module')} (ISA {c.get('isa')}; installed {c.get('installed_isas')});"
          f" OpenMP {c.get('openmp')}; {c.get('compiler')}; Eigen {c.get('eigen')}")
    if k:
        print(f"* numpy matmul reference (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE unset): kernel "
              f"{kernel_name(k['blas'])}; "
              + ", ".join(f"{t} thread(s) {v['matmul_gflops']:.1f} GFLOP/s"
                          for t, v in k["threads"].items()))
    print(f"* numpy matmul with the environment as set (OPENBLAS_CORETYPE="
          f"{raw['OPENBLAS_CORETYPE']}): kernel {kernel_name(mm['blas'])}; "
          + ", ".join(f"{t} thread(s) {v:.1f} GFLOP/s" for t, v in mm["gflops"].items())
          + f" ({mm['n']} x {mm['n']})")
    print(f"* total wall time {raw['wall_s']:.0f} s")
    for name, err in raw.get("errors", {}).items():
        print(f"* **{name} failed**: {err.strip().splitlines()[-1] if err.strip() else err}")
    print()
    print("| figure | target | measured | met |")
    print("|---|---|---|---|")
    for fig, target, measured, ok in rows:
        print(f"| {fig} | {target} | {measured} | {fmt_pass(ok)} |")


if __name__ == "__main__":
    sys.exit(main())
