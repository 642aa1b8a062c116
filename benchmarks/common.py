"""Shared helpers for the benchmark scripts: timing, peak RSS, and merging into the report."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPORT = Path(__file__).resolve().parents[1] / "reports" / "benchmarks.json"


def machine() -> dict[str, Any]:
    """Describe the machine a benchmark ran on."""
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``cmd`` in a child process; return wall seconds and peak RSS (MiB) of its process tree.

    Peak RSS is the largest resident set of the child or any of its own children (ru_maxrss
    of RUSAGE_CHILDREN is a maximum over the waited-for descendants, not a sum).
    """
    start = time.perf_counter()
    code = (
        "import resource, subprocess, sys, json;"
        "r = subprocess.run(sys.argv[1:]);"
        "m = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
        "sys.stderr.write('\\n__MAXRSS__ ' + json.dumps(m) + '\\n');"
        "sys.exit(r.returncode)"
    )
    proc = subprocess.run([sys.executable, "-c", code, *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    maxrss_kb = next(int(line.split()[1]) for line in proc.stderr.splitlines()
                     if line.startswith("__MAXRSS__"))
    return {"seconds": round(wall, 3), "peak_rss_mib": round(maxrss_kb / 1024, 1)}


def self_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def update_report(section: str, data: dict[str, Any], path: Path = REPORT) -> None:
    """Merge ``data`` under ``section`` of ``reports/benchmarks.json`` (file-locked, atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_suffix(".lock")
    with open(lock, "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        report = json.loads(path.read_text()) if path.exists() else {}
        report[section] = {**data, "machine": machine(),
                           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    lock.unlink(missing_ok=True)
