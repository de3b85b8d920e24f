"""The command line: `python -m pipeline COMMAND ...`; each command lives in its own module."""
from __future__ import annotations

import argparse
import os
import sys

# Must precede the first `import tensorflow`, here and in every component subprocess (which inherit them).
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from components.batch_predict import command as predict_catalog  # noqa: E402
from pipeline import benchmark, cli, compile_pipeline, local_run, predict, serve, submit  # noqa: E402

COMMANDS = (compile_pipeline, local_run, submit, serve, predict, predict_catalog, benchmark)
# Flags that import TensorFlow to learn their defaults: added only when their command runs, so that the
# other commands start in a second and print nothing of TensorFlow's.
LATE_FLAGS = {"benchmark": benchmark.add_model_flags}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(commands)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen in LATE_FLAGS:
        LATE_FLAGS[chosen](commands.choices[chosen])
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Only a command that runs a Beam job passes the options it does not know on to the runner.
        if not getattr(args, "takes_beam_args", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.beam_args = unknown
    try:
        args.func(args)
    except cli.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
