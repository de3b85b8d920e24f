"""The README and docs/ say only what is true of this repository.

Every shell command in a fenced block (```sh, ```bash, or the `$ ` lines of ```console) is checked in a
form that fails when it breaks: the module or script must answer `--help`, and every flag the doc gives
it must appear there (a Beam option, for the commands that pass unknown options on to Beam); `compile`
and `submit` really compile into a temporary directory (a submit as the compile of its flags);
`kubectl apply -k DIR` renders with `kubectl kustomize`; `docker build -f FILE` needs FILE; a shell
script must parse and know its flags. Commands that need a cluster, a cloud account or a running server
(curl, gcloud, docker push, kubectl rollout ...) are named in NEEDS_A_SERVICE and only parsed. Every
relative link (with its #anchor) and every repository path in backticks must exist. k8s/README.md is
read too: its kubectl commands are the serving docs'.

The --help and compile runs share one Python process (`python -m tests.test_docs JOBS OUT`), so
TensorFlow is imported once however many commands the docs hold.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")), REPO_ROOT / "k8s" / "README.md"]
README_MAX_LINES = 250
PYTHON = ".venv/bin/python"
SHARED = REPO_ROOT.parent / "shared"
# Values the docs' commands take from the reader's shell (`TAG=$(git rev-parse --short HEAD)`).
DOC_SHELL_VARIABLES = {"TAG": "doc-test", "REGISTRY": "registry.example/hanet"}
# Scripts whose first argument is a subcommand with flags of its own.
SUBCOMMAND_SCRIPTS = {"scripts/probe_lexical.py", "scripts/probe_routing.py", "scripts/probe_image.py"}
# Commands whose options unknown to them go to the Beam runner (pipeline/__main__.py, takes_beam_args).
BEAM_COMMANDS = {"pipeline predict-catalog", "components.preprocess"}
# Programs (or program + subcommand) that need something this machine does not have.
NEEDS_A_SERVICE = {
    "curl": "a running server",
    "printf": "only builds a request for curl",
    "export": "sets the reader's credentials",
    "gcloud": "a Google Cloud account",
    "docker push": "a registry",
    "kubectl rollout": "a cluster",
    "kubectl port-forward": "a cluster",
    "kubectl get": "a cluster",
}
SHELL_OPERATORS = {"&&", "||", "|", ";", "&", ">", ">>", "<"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=(\$\(.*\)|\S*)(\s+#.*)?$")


@dataclass
class Command:
    """One simple command of a doc (a pipeline `a && b | c` gives several)."""

    doc: str
    line: int
    words: list[str]

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}: {' '.join(self.words)}"[:200]


@dataclass
class PythonCommand:
    """`.venv/bin/python -m MODULE [SUB] ...` or `.venv/bin/python SCRIPT ...`."""

    command: Command
    target: str  # a module for runpy.run_module, or a script path
    sub: list[str] = field(default_factory=list)  # the subcommand, for `-m pipeline` and SUBCOMMAND_SCRIPTS
    args: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return " ".join([self.target, *self.sub])


# ---------------------------------------------------------------------------------------------------
# Reading the docs


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, line number of the first line, lines) of each ``` block."""
    blocks, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        opening = re.match(r"^```\s*([\w-]*)", lines[i])
        if not opening:
            i += 1
            continue
        start, body = i + 2, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        blocks.append((opening.group(1).lower(), start, body))
        i += 1
    return blocks


def shell_lines(lang: str, start: int, body: list[str]) -> list[tuple[int, str]]:
    """The command lines of a block, continuation lines joined."""
    if lang in ("sh", "bash", "shell"):
        keep = [(start + n, line) for n, line in enumerate(body)]
    elif lang == "console":
        keep, inside = [], False
        for n, line in enumerate(body):
            if line.startswith("$ "):
                keep.append((start + n, line[2:]))
                inside = line.rstrip().endswith("\\")
            elif inside:
                keep.append((start + n, line))
                inside = line.rstrip().endswith("\\")
    else:
        return []
    joined, pending, first = [], "", 0
    for number, line in keep:
        if not pending:
            first = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append((first, pending + line))
        pending = ""
    return [(n, line) for n, line in joined if line.strip() and not line.lstrip().startswith("#")]


def split_commands(doc: str, number: int, line: str) -> list[Command]:
    if ASSIGNMENT.match(line.strip()):
        return []  # `TAG=$(git rev-parse --short HEAD)`: a variable the following commands use
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    commands, words = [], []
    for token in lexer:
        if token in SHELL_OPERATORS:
            commands.append(words)
            words = []
        else:
            words.append(token)
    commands.append(words)
    out = []
    for words in commands:
        while words and ASSIGNMENT.match(words[0]):
            words = words[1:]
        if words:
            out.append(Command(doc, number, [_expand(w) for w in words]))
    return out


def _expand(word: str) -> str:
    return re.sub(r"\$(\w+)", lambda m: DOC_SHELL_VARIABLES.get(m.group(1), m.group(0)), word)


def inline_spans(text: str) -> list[str]:
    """The `code` spans of the prose (fenced blocks left out)."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", prose)


def doc_commands(path: Path, text: str | None = None) -> list[Command]:
    text = path.read_text() if text is None else text
    name = path.relative_to(REPO_ROOT).as_posix() if path.is_absolute() else str(path)
    commands = []
    for lang, start, body in fenced_blocks(text):
        for number, line in shell_lines(lang, start, body):
            commands.extend(split_commands(name, number, line))
    # The README's table of commands names them in backticks: they must exist too.
    for span in inline_spans(text):
        if span.startswith(PYTHON + " "):
            commands.extend(split_commands(name, 0, span))
    return commands


def python_command(command: Command) -> PythonCommand | None:
    words = command.words
    if words[0] != PYTHON or len(words) < 2:
        return None
    if words[1] == "-m":
        module, rest = words[2], words[3:]
        if module == "pipeline":
            return PythonCommand(command, module, rest[:1], rest[1:])
        return PythonCommand(command, module, [], rest)
    if words[1] in SUBCOMMAND_SCRIPTS:
        return PythonCommand(command, words[1], words[2:3], words[3:])
    return PythonCommand(command, words[1], [], words[2:])


def service_reason(command: Command) -> str | None:
    words = command.words
    if words[0] == "bash":
        return None
    return NEEDS_A_SERVICE.get(" ".join(words[:2])) or NEEDS_A_SERVICE.get(words[0])


def flags_of(args: list[str]) -> list[tuple[str, str | None]]:
    """(--flag, its `=value` if written so) of a command line."""
    out = []
    for arg in args:
        if arg.startswith("--"):
            flag, _, value = arg.partition("=")
            out.append((flag, value or None))
    return out


ALL_COMMANDS = [c for doc in DOCS for c in doc_commands(doc)]
PYTHON_COMMANDS = [p for p in map(python_command, ALL_COMMANDS) if p is not None]


# ---------------------------------------------------------------------------------------------------
# One process runs every --help and compile


def _driver(jobs_file: str, out_file: str) -> None:
    """Runs each job (a module or script with its argv) in this process; writes rc and output."""
    results = []
    for job in json.loads(Path(jobs_file).read_text()):
        if job["target"] == "beam-options":
            from apache_beam.options.pipeline_options import PipelineOptions

            results.append({"rc": 0, "out": "\n".join(PipelineOptions([]).get_all_options()), "err": ""})
            continue
        out, err, rc = io.StringIO(), io.StringIO(), 0
        sys.argv = [job["target"], *job["args"]]
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                if job["target"].endswith(".py"):
                    # As `python SCRIPT` does: the script's directory first, for its sibling modules.
                    sys.path.insert(0, str(Path(job["target"]).resolve().parent))
                    runpy.run_path(job["target"], run_name="__main__")
                else:
                    runpy.run_module(job["target"], run_name="__main__", alter_sys=True)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:  # a module that does not import is the failure this test reports
            rc, err = 1, io.StringIO(f"{type(e).__name__}: {e}")
        results.append({"rc": rc, "out": out.getvalue(), "err": err.getvalue()[-3000:]})
    Path(out_file).write_text(json.dumps(results))


def run_jobs(jobs: list[dict], tmp: Path) -> list[dict]:
    jobs_file, out_file = tmp / "jobs.json", tmp / "results.json"
    jobs_file.write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_docs", str(jobs_file), str(out_file)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    if done.returncode != 0 or not out_file.exists():
        pytest.fail(f"the doc commands' runner failed:\n{done.stderr[-3000:]}")
    return json.loads(out_file.read_text())


@pytest.fixture(scope="module")
def helps(tmp_path_factory) -> dict[str, dict]:
    """--help of every distinct command of the docs, and Beam's option names."""
    names = sorted({p.name: p for p in PYTHON_COMMANDS}.items())
    jobs = [{"target": p.target, "args": [*p.sub, "--help"]} for _, p in names]
    jobs.append({"target": "beam-options", "args": []})
    results = run_jobs(jobs, tmp_path_factory.mktemp("help"))
    out = {name: result for (name, _), result in zip(names, results)}
    out["beam-options"] = results[-1]
    return out


def help_has(help_text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def takes_value(help_text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)} [A-Z{{]", help_text) is not None


def unknown_flags(command: PythonCommand, helps: dict[str, dict]) -> list[str]:
    """The flags of a doc command that its --help does not list (nor Beam, where Beam takes them)."""
    text = helps[command.name]["out"]
    beam = set(helps["beam-options"]["out"].split())
    bad = []
    for flag, value in flags_of(command.args):
        if help_has(text, flag):
            if value and value.startswith("--") and value.partition("=")[0][2:] not in beam:
                bad.append(f"{flag}={value} (not a Beam option)")
            continue
        if command.name in BEAM_COMMANDS and flag[2:] in beam:
            continue
        bad.append(flag)
    return bad


# ---------------------------------------------------------------------------------------------------
# The tests


def test_every_command_of_the_docs_is_one_this_test_checks():
    assert PYTHON_COMMANDS, "no python command found in the docs: the extraction is broken"
    unchecked = [
        c.where
        for c in ALL_COMMANDS
        if python_command(c) is None and service_reason(c) is None
        and not _is_script(c) and c.words[:2] not in (["kubectl", "apply"], ["kubectl", "kustomize"], ["docker", "build"])
    ]
    assert not unchecked, "commands the docs give that nothing here checks:\n" + "\n".join(unchecked)


@pytest.mark.parametrize("command", PYTHON_COMMANDS, ids=lambda p: p.command.where[:80])
def test_python_command_exists_and_takes_the_flags_the_doc_gives(command, helps):
    result = helps[command.name]
    assert result["rc"] == 0 and "usage:" in result["out"], (
        f"{command.command.where}\n`{command.name} --help` failed:\n{result['err']}"
    )
    bad = unknown_flags(command, helps)
    assert not bad, f"{command.command.where}\nflags its --help does not list: {bad}"


def test_the_flag_check_catches_a_flag_that_does_not_exist(helps):
    compile_commands = [p for p in PYTHON_COMMANDS if p.name == "pipeline compile"]
    assert compile_commands, "the docs show no compile command"
    wrong = PythonCommand(compile_commands[0].command, "pipeline", ["compile"], ["--no-such-flag", "--output", "x"])
    assert unknown_flags(wrong, helps) == ["--no-such-flag"]
    text = "```sh\n.venv/bin/python -m pipeline compile \\\n    --imag-tag x  # a typo\n```\n"
    (parsed,) = [python_command(c) for c in doc_commands(Path("fake.md"), text)]
    assert (parsed.name, parsed.args, parsed.command.line) == ("pipeline compile", ["--imag-tag", "x"], 2)


def compile_job(command: PythonCommand, helps: dict[str, dict], output: Path) -> dict:
    """A doc's compile, or submit as the compile of its flags, writing into `output`."""
    compile_help = helps["pipeline compile"]["out"] if "pipeline compile" in helps else ""
    submit_help = helps[command.name]["out"]
    args, skip = [], False
    for arg in command.args:
        if skip:
            skip = False
            continue
        flag = arg.partition("=")[0]
        if arg.startswith("--") and (flag == "--output" or not help_has(compile_help, flag)):
            # submit's own flags (--host, --wait, --schedule ...) and the doc's output path
            skip = "=" not in arg and takes_value(submit_help, flag)
            continue
        args.append(arg)
    return {"target": "pipeline", "args": ["compile", *args, "--output", str(output)]}


COMPILES = [p for p in PYTHON_COMMANDS if p.name in ("pipeline compile", "pipeline submit")]


def test_compile_and_submit_commands_compile(helps, tmp_path):
    assert COMPILES, "the docs show no compile or submit command"
    outputs = [tmp_path / f"spec-{n}.yaml" for n in range(len(COMPILES))]
    jobs = [compile_job(c, helps, out) for c, out in zip(COMPILES, outputs)]
    results = run_jobs(jobs, tmp_path)
    failed = [
        f"{c.command.where}\n  ran: compile {' '.join(j['args'][1:])}\n  {r['err'].strip()}"
        for c, j, r, out in zip(COMPILES, jobs, results, outputs)
        if r["rc"] != 0 or not out.exists() or "pipelineInfo" not in out.read_text()
    ]
    assert not failed, "\n".join(failed)


def _is_script(command: Command) -> bool:
    words = command.words[1:] if command.words[0] == "bash" else command.words
    return bool(words) and words[0].endswith(".sh")


SCRIPTS = [c for c in ALL_COMMANDS if _is_script(c)]


@pytest.mark.parametrize("command", SCRIPTS, ids=lambda c: c.where[:80])
def test_shell_script_parses_and_knows_its_flags(command):
    direct = command.words[0] != "bash"
    words = command.words if direct else command.words[1:]
    script = REPO_ROOT / words[0]
    assert script.is_file(), f"{command.where}: no {words[0]}"
    assert not direct or os.access(script, os.X_OK), f"{command.where}: {words[0]} is not executable"
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, f"{command.where}: {done.stderr}"
    text = script.read_text()
    missing = [f for f, _ in flags_of(words[1:]) if f not in text]
    assert not missing, f"{command.where}: {words[0]} does not handle {missing}"


KUSTOMIZE_DIRS = sorted(
    {c.words[c.words.index("-k") + 1] for c in ALL_COMMANDS if c.words[:2] == ["kubectl", "apply"]}
    | {c.words[2] for c in ALL_COMMANDS if c.words[:2] == ["kubectl", "kustomize"]}
)


@pytest.mark.parametrize("directory", KUSTOMIZE_DIRS)
def test_kubectl_apply_directory_renders(directory):
    assert (REPO_ROOT / directory / "kustomization.yaml").is_file(), f"no kustomization in {directory}"
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return  # the file's presence is all that can be checked without kubectl
    done = subprocess.run([kubectl, "kustomize", directory], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "kind:" in done.stdout, f"`kubectl kustomize {directory}`: {done.stderr}"


def test_docker_build_files_exist():
    builds = [c for c in ALL_COMMANDS if c.words[:2] == ["docker", "build"]]
    for command in builds:
        dockerfile = command.words[command.words.index("-f") + 1]
        assert (REPO_ROOT / dockerfile).is_file(), f"{command.where}: no {dockerfile}"
        assert (REPO_ROOT / command.words[-1]).is_dir(), f"{command.where}: the build context is not a directory"


def test_readme_is_short_and_keeps_the_setup_commands():
    text = (REPO_ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    readme = [c.words for c in doc_commands(REPO_ROOT / "README.md")]
    # CI runs exactly these: the README must keep telling a newcomer the same two.
    assert ["scripts/install.sh", "--dev"] in readme
    assert [PYTHON, "-m", "pytest", "-q"] in readme


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_and_their_anchors_exist(doc):
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue  # a URL
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.name}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


TOP_LEVEL = {p.name for p in REPO_ROOT.iterdir() if not p.name.startswith(".")}


def repo_paths(doc: Path) -> list[str]:
    """Paths into the repository (or ../shared) named in the doc's code: in backticks or commands."""
    words = [w for span in inline_spans(doc.read_text()) for w in span.split()]
    words += [w for c in doc_commands(doc) for w in c.words]
    out = []
    for word in words:
        word = word.strip("'\",;:()").split("=")[-1]
        if re.search(r"[<>…{}]|\.\.\.", word) or "://" in word:
            continue  # a placeholder, or a URI
        head = word.split("/")[0]
        if ("/" in word and head in TOP_LEVEL) or (word in TOP_LEVEL and "." in word):
            out.append(word)
        elif word.startswith("../shared/") and SHARED.exists():
            out.append(word)
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_repository_paths_in_backticks_exist(doc):
    missing = sorted({p for p in repo_paths(doc) if not (REPO_ROOT / p).exists() and not ("*" in p and list(REPO_ROOT.glob(p)))})
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


if __name__ == "__main__":
    _driver(*sys.argv[1:3])
