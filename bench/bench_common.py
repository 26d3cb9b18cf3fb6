"""Shared helpers of the benchmark scripts: data shapes, timing, subprocess runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# OneK1K (Yazar et al. 2022): 982 donors, ~1.27 million cells.
ONEK1K = dict(n_groups=982, n_cells=1_270_000, p=30, q=10, K=30, L=30)


def best_time(fn, repeat: int) -> tuple[float, float]:
    """(best, median) wall time of ``repeat`` calls of ``fn`` (the machine may be shared)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def cohort_sizes(n_groups: int, n_cells: int, seed: int = 0) -> np.ndarray:
    """Cells per individual: log-normal (log-sd 0.5) around the mean, summing to ``n_cells``."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(0.0, 0.5, n_groups)
    sizes = np.maximum(1, np.floor(raw / raw.sum() * n_cells)).astype(np.int64)
    sizes[np.argmax(sizes)] += n_cells - sizes.sum()
    return sizes


def simulate_cohort(n_groups, n_cells, p, q, seed=0, n_group_clusters=4, n_cell_clusters=12):
    """A OneK1K-shaped simulation (nothing is cached on disk)."""
    import nestedatoms as na

    return na.simulate(n_groups=n_groups, cells_per_group=cohort_sizes(n_groups, n_cells, seed),
                       n_group_clusters=n_group_clusters, n_cell_clusters=n_cell_clusters,
                       n_group_features=q, n_cell_features=p, random_state=seed)


def run_json(args: list, env: dict | None = None, timeout: float = 900) -> dict:
    """Run ``python args...`` in a fresh interpreter and parse the JSON it prints last."""
    full_env = dict(os.environ)
    if env is not None:
        for key, value in env.items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full_env,
                         timeout=timeout, cwd=HERE)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
