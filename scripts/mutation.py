"""Mutation testing: the share of mutmut's mutants of each guarded module that its own fast tests kill.

    .venv/bin/python scripts/mutation.py [--sample 0.3] [--seed 0] [--only fusion.py,metrics.py] [--report FILE]
    .venv/bin/python scripts/mutation.py --only metrics.py --survivors FILE

For each module of TARGETS, mutmut's operators (mutmut.list_mutations) give every mutant of it: a
number, operator, keyword, string or name changed, an argument or a decorator dropped. With `--sample`
a seeded random share of them runs, in random order (a run stopped early reports the
random sample it ran). Each mutant is written into a scratch copy of the project and the
module's own test files run against it in one pytest process (`-x`, their quick tests: `-m "not slow"`): the mutant is killed when they
fail or run over three times the clean run. Each run is a fork of one process that imported
TensorFlow and the other heavy libraries once (PRELOAD). It prints killed / run and the score per module, and each
survivor as its changed line, to read and judge. `--survivors FILE` reruns only the survivors an
earlier `--report FILE` lists: when tests were only added since (the module unchanged, so its mutants
are the same), the mutants that run killed stay killed, and the survivors are all that can change.

mutmut's own `run` is not used: it mutates the working tree in place (an interrupted run leaves a
mutant in the source) and cannot sample; its mutation operators are what matters, and they are the same.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from mutmut import ALL, Context, list_mutations, mutate

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# module → its own fast test files.
TARGETS = {
    # test_experts: hanet_experts' layers (expert_streams to HanetExpertsHead) are checked there.
    "trainer/fusion.py": ["tests/test_fusion.py", "tests/test_experts.py"],
    "common/metrics.py": ["tests/test_metrics.py", "tests/test_routing.py"],  # routing: roc_auc, RoutingCounts
    "components/preprocess/row_checks.py": ["tests/test_row_checks.py"],
    "serving/json_tensor.py": ["tests/test_serving_json.py"],
}
# The scratch copy links what the tests read but git does not hold.
LINKED = (".venv", "pretrained")
TIMEOUT_FACTOR = 3.0


@dataclasses.dataclass
class Result:
    module: str
    total: int
    killed: int = 0
    survivors: list = dataclasses.field(default_factory=list)

    @property
    def run(self) -> int:
        return self.killed + len(self.survivors)

    @property
    def score(self) -> float:
        return self.killed / self.run if self.run else float("nan")


def scratch_copy(root: pathlib.Path) -> pathlib.Path:
    """The project's tracked files (with uncommitted edits) under a temporary folder, beside a link to ../shared."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="hanet-mutation-"))
    repo = base / REPO_ROOT.name
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        source = root / name
        if source.is_file() and not source.is_symlink():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    for name in LINKED:
        if (root / name).exists():
            (repo / name).symlink_to((root / name).resolve())
    if (root.parent / "shared").exists():
        (base / "shared").symlink_to((root.parent / "shared").resolve())
    return repo


# Imported once by the parent and inherited by each forked test run, so that a mutant costs its
# tests, not TensorFlow's import. Nothing of the project is preloaded: each child imports the mutant.
PRELOAD = ("numpy", "tensorflow", "tf_keras", "PIL.Image", "pytest")
TEST_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONDONTWRITEBYTECODE": "1"}


def preload() -> None:
    os.environ.update(TEST_ENV)  # before TensorFlow's import, which reads them
    sys.dont_write_bytecode = True  # a mutant of the same size in the same second would reuse stale bytecode
    for name in PRELOAD:
        importlib.import_module(name)


def run_tests(repo: pathlib.Path, tests: list[str], timeout: float | None) -> tuple[bool, float]:
    """(whether `tests` passed, seconds): pytest (-x, one process) in a forked child, killed at `timeout`."""
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: quiet, in the scratch copy, never returns
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.chdir(repo)
        sys.path.insert(0, str(repo))
        import pytest

        os._exit(int(pytest.main(["-q", "-x", "-n", "0", "-p", "no:cacheprovider", "-m", "not slow", *tests])))
    try:
        while not (done := os.waitpid(pid, os.WNOHANG))[0]:
            if timeout is not None and time.monotonic() - start > timeout:
                raise TimeoutError
            time.sleep(0.2)
    except (TimeoutError, KeyboardInterrupt) as stop:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if isinstance(stop, KeyboardInterrupt):
            raise
        return False, time.monotonic() - start
    return os.waitstatus_to_exitcode(done[1]) == 0, time.monotonic() - start


def mutants(source: str, filename: str) -> list:
    return list_mutations(Context(source=source, filename=filename, mutation_id=ALL))


def changed_line(source: str, mutated: str) -> str:
    diff = [line for line in difflib.unified_diff(source.splitlines(), mutated.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return " | ".join(line.strip() for line in diff)


def _mutated(source: str, module: str, mutation_id) -> str:
    return mutate(Context(source=source, filename=module, mutation_id=mutation_id))[0]


def mutant_line(source: str, mutation_id, mutated: str) -> str:
    """How a report names a mutant ("line N: the changed line"), and how --survivors finds it again."""
    return f"line {mutation_id.line_number + 1}: {changed_line(source, mutated)}"


def mutation_score(repo: pathlib.Path, module: str, tests: list[str], sample: float, seed: int,
                   survivors: list[str] | None = None) -> Result:
    """Runs the sampled mutants in their random order, so that a run stopped early (Ctrl-C, SIGTERM)
    still reports a random sample: what ran so far. With `survivors` (an earlier report's changed
    lines), only those mutants run."""
    path = repo / module
    source = path.read_text()
    ids = mutants(source, module)
    if survivors is None:
        chosen = random.Random(seed).sample(ids, max(1, round(sample * len(ids))))
    else:
        # A changed line names its mutant as long as the module is the one the report ran on.
        on_lines = {int(line.split(":")[0].removeprefix("line ")) for line in survivors}
        by_line = {mutant_line(source, m, _mutated(source, module, m)): m for m in ids if m.line_number + 1 in on_lines}
        if missing := [line for line in survivors if line not in by_line]:
            raise SystemExit(f"{module} changed since the report: no mutant gives {missing[0]!r}")
        chosen = [by_line[line] for line in survivors]
    result = Result(module, len(ids))
    passed, clean = run_tests(repo, tests, None)
    if not passed:
        raise SystemExit(f"{module}: its tests {' '.join(tests)} fail without any mutant; fix them first")
    print(f"{module}: {len(ids)} mutants, running {len(chosen)}; clean test run {clean:.0f} s", flush=True)
    try:
        for number, mutation_id in enumerate(chosen, 1):
            mutated = _mutated(source, module, mutation_id)
            path.write_text(mutated)
            survived, seconds = run_tests(repo, tests, max(30.0, TIMEOUT_FACTOR * clean))
            line = mutant_line(source, mutation_id, mutated)
            if survived:
                result.survivors.append(line)
            else:
                result.killed += 1
            print(f"  [{number}/{len(chosen)}] {'SURVIVED' if survived else 'killed'} ({seconds:.0f} s) {line}",
                  flush=True)
    except KeyboardInterrupt:
        print(f"  stopped after {result.run} of {len(chosen)} mutants", flush=True)
    finally:
        path.write_text(source)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=float, default=1.0, help="share of each module's mutants to run, in (0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--only", default="", help="comma-separated module file names (e.g. fusion.py); default all")
    parser.add_argument("--report", help="also write the results as JSON to this file")
    parser.add_argument("--survivors", metavar="FILE",
                        help="run only the survivors of an earlier --report FILE (its modules unchanged)")
    args = parser.parse_args(argv)
    if not 0.0 < args.sample <= 1.0:
        parser.error("--sample must be in (0, 1]")
    only = {name for name in args.only.split(",") if name}
    targets = {m: t for m, t in TARGETS.items() if not only or pathlib.Path(m).name in only}
    if not targets:
        parser.error(f"--only matches none of {', '.join(pathlib.Path(m).name for m in TARGETS)}")
    preload()
    # SIGTERM stops a run as Ctrl-C does: the mutants run so far are reported.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    repo = scratch_copy(REPO_ROOT)
    try:
        earlier = ({r["module"]: r["survivors"] for r in json.loads(pathlib.Path(args.survivors).read_text())}
                   if args.survivors else None)
        results = [mutation_score(repo, module, tests, args.sample, args.seed,
                                  None if earlier is None else earlier.get(module, []))
                   for module, tests in targets.items()]
    finally:
        shutil.rmtree(repo.parent, ignore_errors=True)
    print("\nmodule                                  killed / run   score   (mutants in module)")
    for r in results:
        print(f"{r.module:40s} {r.killed:6d} / {r.run:<5d} {100 * r.score:6.1f} %   ({r.total})")
        for line in r.survivors:
            print(f"    survived {line}")
    if args.report:
        pathlib.Path(args.report).write_text(json.dumps(
            [{**dataclasses.asdict(r), "score": r.score} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
