"""What run-local and the benchmark show (common/console.py): progress lines on the terminal, the rest of
a process's output in the log, whatever wrote it; a failure is one line naming its cause and the log."""
import logging
import os
import subprocess
import sys
import warnings

import pytest

from common import console
from common.cli import UserError
from pipeline import local_run


def test_only_progress_lines_reach_the_terminal_and_everything_reaches_the_log(tmp_path, capsys):
    log = tmp_path / "logs" / "run.log"
    with console.quiet(str(log)) as screen:
        print("[text_only] epoch 1: loss 2.9, accuracy 0.31")
        print("Epoch 1/20")  # Keras' own line
        print("[KFP Executor 2026-01-01 10:00:00,000 INFO]: Feature title has a shape . Setting to DenseTensor.")
        print("[libprotobuf WARNING google/protobuf/x.cc:1] a C++ warning")
        sys.stdout.write("    [cache] train: 812 products, ")  # kfp.local indents, and lines arrive in pieces
        sys.stdout.write("31.5 products/s\n")
        os.write(2, b"I0000 00:00:1 cudart_stub.cc:31] Could not find cuda drivers\n")  # TensorFlow's C++ log
        os.write(1, b"written to the descriptor itself\n")
        logging.getLogger("apache_beam").warning("a Beam warning")
        warnings.warn("a library's warning")
        subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"],
                       check=True)
        screen.say("preprocess: finished in 3 s")
    assert capsys.readouterr().out.splitlines() == [
        "[text_only] epoch 1: loss 2.9, accuracy 0.31",
        "[cache] train: 812 products, 31.5 products/s",
        "preprocess: finished in 3 s",
    ]
    text = log.read_text()
    for line in ("Epoch 1/20", "Setting to DenseTensor", "[libprotobuf WARNING", "cudart_stub", "the descriptor itself",
                 "a Beam warning", "a library's warning", "child out", "child err", "[text_only] epoch 1",
                 "preprocess: finished"):
        assert line in text, line
    # Afterwards the process's output goes where it went before.
    print("after")
    assert capsys.readouterr().out == "after\n"


def test_a_failure_inside_is_one_line_naming_the_cause_and_the_log(tmp_path):
    log = tmp_path / "run.log"
    with pytest.raises(UserError) as error:
        with console.quiet(str(log)):
            raise KeyError("catalog_file")
    assert str(error.value) == f"KeyError: 'catalog_file' (the traceback is in {log})"
    assert "Traceback (most recent call last)" in log.read_text()
    with pytest.raises(UserError, match="^a mistake$"):  # the user's own mistakes are left as they are
        with console.quiet(str(log)):
            raise UserError("a mistake")


def test_verbose_shows_everything_and_writes_no_log(tmp_path, capsys):
    with console.quiet(str(tmp_path / "run.log"), verbose=True) as screen:
        print("Epoch 1/20")
        screen.say("train: started")
    assert capsys.readouterr().out == "Epoch 1/20\ntrain: started\n"
    assert not (tmp_path / "run.log").exists()


def test_the_cause_is_the_last_exception_line():
    lines = ["Traceback (most recent call last):", '  File "x.py", line 3, in <module>',
             "RuntimeError: Pipeline failed", "Traceback (most recent call last):", "  ...",
             "ValueError: image_size must be positive [while running 'Transform']", "", "[KFP Executor ...]: done"]
    assert console.last_error(lines) == "ValueError: image_size must be positive [while running 'Transform']"
    assert console.last_error(["nothing failed here"]) is None


def _kfp_record(message: str) -> logging.LogRecord:
    return logging.LogRecord("root", logging.INFO, __file__, 1, message, None, None)


def test_run_local_says_when_each_task_starts_and_ends_and_names_a_failed_tasks_cause(tmp_path, capsys):
    """kfp.local's own records (colours and all, as kfp/local/task_dispatcher.py logs them)."""
    with pytest.raises(UserError) as error:
        with console.quiet(str(tmp_path / "run-local.log")) as screen:
            tasks = local_run._TaskProgress(screen)
            assert tasks.filter(_kfp_record("Executing task \x1b[96m'preprocess'\x1b[0m"))
            tasks.filter(_kfp_record("Task \x1b[96m'preprocess'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m"))
            tasks.filter(_kfp_record("Executing task \x1b[96m'train'\x1b[0m"))
            print("    Traceback (most recent call last):\n    ValueError: no examples in split train")
            raise UserError(tasks.failure(RuntimeError("Task 'train' finished with status FAILURE")))
    assert capsys.readouterr().out.splitlines() == ["preprocess: started", "preprocess: finished in 0 s", "train: started"]
    assert str(error.value) == (f"task train failed: ValueError: no examples in split train "
                                f"(log: {tmp_path / 'run-local.log'})")


def test_run_local_and_the_benchmark_take_verbose_and_the_benchmark_its_model_flags(capsys):
    from pipeline.__main__ import main

    for command, flags in (("run-local", ["--verbose"]), ("benchmark", ["--verbose", "--head-width", "--text-top-blocks"])):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        shown = capsys.readouterr().out
        assert all(flag in shown for flag in flags), command
