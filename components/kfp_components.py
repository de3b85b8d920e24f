"""Moved to pipeline/kfp_components.py: the KFP shells are pipeline glue, not stage logic.

This alias stays only until tests/test_gate.py imports `pipeline.kfp_components` (a colleague's file,
being edited); tests/test_dependencies.py allows this one import of the pipeline package from
components/ and nothing else may import this module.
"""
from pipeline.kfp_components import *  # noqa: F401,F403
