"""Run every study at its smallest setting, so that a change to the package that breaks a study
fails CI (``.ci/run``).  It checks that the studies run, not what they find.

    python studies/run.py --quick              # every study (about 3 minutes on 2 idle cores)
    python studies/run.py --quick recovery     # some of them, by name
    python studies/run.py --list

Each study runs in its own interpreter with ``NESTEDATOMS_STUDY_RESULTS`` set to a temporary
folder, so nothing in ``studies/results/`` changes.  A study whose data are absent (the
real-data study without ``cytonormpy``, the semi-synthetic one without ``scanpy``) exits with
status 3 and is reported as skipped, which does not fail the run; any other non-zero status
does.  ``--require-data`` makes a skip fail as well.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SKIPPED = 3           # the exit status of a study whose data are absent

# name -> the script and its smallest setting
STUDIES = {
    "recovery": ["study_recovery.py", "--quick"],        # also study_ceiling, study_prior_scale
    "labelling-bound": ["study_labelling_bound.py", "--quick"],
    "donor-variation": ["study_donor_variation.py", "--quick"],
    "semisynthetic": ["study_semisynthetic.py", "--quick"],
    "real-data": ["study_real_data.py", "--quick", "--no-plots"],
}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(name: str, scratch: str) -> tuple:
    """(status, wall seconds, CPU seconds, last lines of output) of one study's smoke run.
    The CPU time is what the run would take on an idle core: on a shared machine the wall
    time is longer."""
    script, *args = STUDIES[name]
    env = {**os.environ, "NESTEDATOMS_STUDY_RESULTS": os.path.join(scratch, name),
           "MPLBACKEND": "Agg"}
    start, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.run([sys.executable, os.path.join(HERE, script), *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return (proc.returncode, time.perf_counter() - start, _children_cpu() - cpu,
            proc.stdout.splitlines()[-15:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="studies to run (default: all)")
    ap.add_argument("--quick", action="store_true",
                    help="each study's smallest setting (the only mode: the full studies are "
                         "run one by one, see STUDY.md)")
    ap.add_argument("--list", action="store_true", help="list the studies and exit")
    ap.add_argument("--require-data", action="store_true",
                    help="fail, rather than skip, a study whose data are absent")
    args = ap.parse_args(argv)
    if args.list:
        for name, (script, *rest) in STUDIES.items():
            print(f"{name:16s} python studies/{script} {' '.join(rest)}")
        return 0
    if not args.quick:
        ap.error("only --quick is supported: run a full study through its own script")
    unknown = sorted(set(args.names) - set(STUDIES))
    if unknown:
        ap.error(f"unknown studies {unknown}; choose from {list(STUDIES)}")
    failed = []
    total, total_cpu = time.perf_counter(), _children_cpu()
    with tempfile.TemporaryDirectory(prefix="nestedatoms-studies-") as scratch:
        for name in args.names or list(STUDIES):
            status, seconds, cpu, tail = run_one(name, scratch)
            took = f"({seconds:.0f} s, {cpu:.0f} s of CPU)"
            if status == 0:
                print(f"ok       {name} {took}", flush=True)
                continue
            skipped = status == SKIPPED
            verdict = "skipped" if skipped else f"FAILED (exit status {status})"
            print(f"{verdict:8s} {name} {took}", flush=True)
            print("\n".join("    " + line for line in (tail[-2:] if skipped else tail)))
            if not skipped or args.require_data:
                failed.append(name)
    print(f"studies smoke run: {time.perf_counter() - total:.0f} s, "
          f"{_children_cpu() - total_cpu:.0f} s of CPU; "
          f"{'failed: ' + ', '.join(failed) if failed else 'all ran (or skipped)'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
