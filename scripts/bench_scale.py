"""How run-local scales with the catalog: each stage's wall time and peak memory, and each output's disk,
at several catalog sizes, with the fitted slopes and a projection to the paper's 1.5M products.

For each N of --products it writes a synthetic catalog (scripts/scale_catalog.py: K = min(--classes,
N // --products-per-class) classes, Zipf tail, titles carrying a class token, the shared photos reused) and runs

    python -m pipeline run-local --tune frozen --head-epochs 3 --epochs 2 ...

sampling the process tree every 0.2 s (psutil): a stage's peak RSS is the largest total of run-local's
descendants (not run-local itself) while kfp.local runs that task, the whole run's the largest total of
the tree. A stage's time is between its "started" and "finished" lines; the baseline's fit comes from
the evaluate stage's blessing file. Then a least-squares line per figure over N, and that line at
1.5M products:

    .venv/bin/python scripts/bench_scale.py --products 5000 20000 --classes 5600 --out /work/bench/scale
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from scripts.scale_catalog import LABEL_COLUMN, write_catalog  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
STAGES = ("preprocess", "train", "evaluate", "push")
PAPER_PRODUCTS = 1_500_000
GIB = 2**30
_STARTED = re.compile(r"^(\S+): started")
_FINISHED = re.compile(r"^(\S+): finished in")


def _stage(task: str) -> str | None:
    return next((s for s in STAGES if task.startswith(s)), None)


class TreeSampler:
    """Peak RSS of the process tree under `pid` (its descendants: `children`; with it: `tree`), per stage."""

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.current: str | None = None
        self.stage_peak: dict[str, int] = {}
        self.tree_peak = 0
        self._cpu: dict[int, tuple[str, float]] = {}  # pid → (stage it last ran in, its CPU seconds then)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._done.is_set():
            try:
                children = 0
                for child in self.root.children(recursive=True):
                    try:
                        children += child.memory_info().rss
                        if self.current:
                            times = child.cpu_times()
                            self._cpu[child.pid] = (self.current, times.user + times.system)
                    except psutil.Error:
                        pass
                tree = children + self.root.memory_info().rss
            except psutil.Error:
                break
            self.tree_peak = max(self.tree_peak, tree)
            if self.current:
                self.stage_peak[self.current] = max(self.stage_peak.get(self.current, 0), children)
            time.sleep(0.2)

    def stop(self):
        self._done.set()
        self._thread.join()

    def stage_cpu(self) -> dict[str, float]:
        """CPU seconds of the processes each stage ran (as last sampled, so up to 0.2 s short each): on a
        machine shared with other jobs, what wall time cannot show."""
        cpu = {}
        for stage, seconds in self._cpu.values():
            cpu[stage] = cpu.get(stage, 0.0) + seconds
        return cpu


def _du(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _outputs_disk(work_dir: pathlib.Path) -> dict[str, int]:
    """Bytes under each task's directory of the kfp.local pipeline root."""
    disk = {}
    for task_dir in glob.glob(str(work_dir / "pipeline_root" / "*" / "*")):
        stage = _stage(os.path.basename(task_dir))
        if stage and os.path.isdir(task_dir):
            disk[stage] = disk.get(stage, 0) + _du(task_dir)
    return disk


def _baseline_seconds(work_dir: pathlib.Path) -> float | None:
    for path in glob.glob(str(work_dir / "pipeline_root" / "*" / "evaluate*" / "**" / "blessing"), recursive=True):
        try:
            with open(path) as f:
                return json.load(f)["baseline"]["fit_seconds"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def run_once(products: int, classes: int, out: pathlib.Path, extra: list[str]) -> dict:
    catalog = out / f"catalog-{products}.csv"
    write_catalog(catalog, products, classes)
    work_dir = out / f"run-{products}"
    command = [sys.executable, "-m", "pipeline", "run-local", "--catalog", str(catalog), "--label-column",
               LABEL_COLUMN, "--work-dir", str(work_dir), "--tune", "frozen", "--head-epochs", "3", "--epochs", "2",
               *extra]
    log = open(out / f"run-{products}.out", "w")
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT)
    sampler = TreeSampler(proc.pid)
    begun, seconds = {}, {}
    for line in proc.stdout:
        log.write(line)
        log.flush()
        plain = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if (match := _STARTED.match(plain)) and _stage(match.group(1)):
            sampler.current = _stage(match.group(1))
            begun[sampler.current] = time.monotonic()
        elif (match := _FINISHED.match(plain)) and _stage(match.group(1)):
            stage = _stage(match.group(1))
            seconds[stage] = time.monotonic() - begun.get(stage, started)
            sampler.current = None
    proc.wait()
    sampler.stop()
    if proc.returncode:
        sys.exit(f"run-local at {products} products failed: see {out / f'run-{products}.out'}")
    return {"products": products, "classes": classes, "seconds": seconds, "whole_seconds": time.monotonic() - started,
            "cpu_seconds": sampler.stage_cpu(), "peak_rss": sampler.stage_peak, "tree_peak_rss": sampler.tree_peak, "disk": _outputs_disk(work_dir),
            "baseline_seconds": _baseline_seconds(work_dir)}


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line; a single point: through the origin."""
    import numpy as np

    if len(xs) < 2:
        return ys[0] / xs[0], 0.0
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(slope), float(intercept)


def report(results: list[dict]) -> str:
    lines = ["| products (classes) | " + " | ".join(f"{s}: s (CPU s), peak GiB" for s in STAGES)
             + " | baseline s | whole run s | tree peak GiB | disk MB (" + ", ".join(STAGES) + ") |",
             "|---" * (len(STAGES) + 5) + "|"]
    for r in results:
        cells = [f"{r['seconds'].get(s, 0):.0f} ({r['cpu_seconds'].get(s, 0):.0f}), {r['peak_rss'].get(s, 0) / GIB:.2f}"
                 for s in STAGES]
        disk = ", ".join(f"{r['disk'].get(s, 0) / 1e6:.0f}" for s in STAGES)
        baseline = "–" if r["baseline_seconds"] is None else f"{r['baseline_seconds']:.1f}"
        lines.append(f"| {r['products']:,} ({r['classes']:,}) | " + " | ".join(cells)
                     + f" | {baseline} | {r['whole_seconds']:.0f} | {r['tree_peak_rss'] / GIB:.2f} | {disk} |")
    xs = [r["products"] for r in results]
    lines += ["", f"| figure | per 1,000 products | at 0 | at {PAPER_PRODUCTS:,} (this machine) |", "|---|---:|---:|---:|"]
    figures = {f"{s} s": [r["seconds"].get(s, 0) for r in results] for s in STAGES}
    figures |= {f"{s} CPU s": [r["cpu_seconds"].get(s, 0) for r in results] for s in STAGES}
    figures |= {f"{s} peak GiB": [r["peak_rss"].get(s, 0) / GIB for r in results] for s in STAGES}
    figures |= {f"{s} disk GB": [r["disk"].get(s, 0) / 1e9 for r in results] for s in STAGES}
    figures["whole run s"] = [r["whole_seconds"] for r in results]
    for name, ys in figures.items():
        slope, intercept = _line(xs, ys)
        lines.append(f"| {name} | {1000 * slope:.4g} | {intercept:.4g} | {intercept + slope * PAPER_PRODUCTS:.4g} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, nargs="+", required=True)
    parser.add_argument("--classes", type=int, default=5600, help="at most N // --products-per-class at N products")
    # At least a few products a class on average, so that the Zipf tail leaves most classes in train (a
    # class has one product at least). It was 4, which gave 5,000 classes at 20K instead of 5,600.
    parser.add_argument("--products-per-class", type=int, default=3, help="the fewest products a class on average")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="catalogs, work directories, results")
    parser.add_argument("extra", nargs="*", help="after --: more run-local flags")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    for products in args.products:
        if any(r["products"] == products for r in results):
            continue  # measured by an earlier invocation: the figures accumulate
        results.append(run_once(products, min(args.classes, products // args.products_per_class), args.out, args.extra))
        results.sort(key=lambda r: r["products"])
        results_file.write_text(json.dumps(results, indent=1))
        print(report(results), flush=True)


if __name__ == "__main__":
    main()
