"""What the benchmark scripts share: scaled copies of a catalog, and a child process measured from
launch to exit (wall time, CPU time of it and its descendants, peak resident memory of the tree)."""
from __future__ import annotations

import csv
import pathlib
import resource
import subprocess
import sys
import threading
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def write_scaled_catalog(source: pathlib.Path, scale: int, path: pathlib.Path) -> int:
    """`scale` copies of the catalog, streamed row by row; image paths made absolute. Returns rows."""
    rows = 0
    with open(path, "w", newline="") as out:
        writer = None
        for copy in range(scale):
            with open(source, newline="") as f:
                for row in csv.DictReader(f):
                    if writer is None:
                        writer = csv.DictWriter(out, fieldnames=list(row))
                        writer.writeheader()
                    row["id"] = row["id"] if copy == 0 else f"{row['id']}-copy{copy}"
                    row["image"] = str(source.parent / row["image"])
                    writer.writerow(row)
                    rows += 1
    return rows


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(command: list[str]) -> tuple[float, float, int, str]:
    """Runs `command`; returns (wall seconds, CPU seconds, peak tree RSS in bytes, stdout)."""
    import psutil

    cpu_before = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                total = root.memory_info().rss
                for child in root.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            peak = max(peak, total)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} ... failed:\n{stderr[-3000:]}")
    # Counts every descendant that was waited for: Beam's and the pool's worker processes are.
    return wall, _children_cpu() - cpu_before, peak, stdout
