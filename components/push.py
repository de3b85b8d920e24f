"""The push stage: a blessed model → SERVING_BASE/MODEL_NAME/VERSION/, the layout TF Serving polls."""
from __future__ import annotations

import os
import posixpath
import uuid

import tensorflow as tf

from trainer import features


def _join(*parts: str) -> str:
    # posixpath for URIs (gs://...), which os.path would mangle on other platforms.
    return posixpath.join(*parts) if "://" in parts[0] else os.path.join(*parts)


def served_versions(serving_base: str, model_name: str = features.MODEL_NAME) -> list[int]:
    model_base = _join(serving_base, model_name)
    if not tf.io.gfile.isdir(model_base):
        return []
    return sorted(int(name.rstrip("/")) for name in tf.io.gfile.listdir(model_base) if name.rstrip("/").isdigit())


def _copy_tree(source: str, target: str) -> None:
    for directory, _, files in tf.io.gfile.walk(source):
        relative = os.path.relpath(directory, source)
        destination = target if relative == "." else _join(target, relative)
        tf.io.gfile.makedirs(destination)
        for name in files:
            tf.io.gfile.copy(_join(directory, name), _join(destination, name), overwrite=True)


def push(model_dir: str, serving_base: str, model_name: str = features.MODEL_NAME) -> str:
    """Copies the SavedModel to the next integer version; returns that version's directory.

    The copy is written under a hidden name and renamed at the end: TF Serving only loads directories
    named by an integer, so it never sees a half-written version.
    """
    if not tf.io.gfile.exists(_join(model_dir, "saved_model.pb")):
        raise FileNotFoundError(f"{model_dir} is not a SavedModel (no saved_model.pb)")
    versions = served_versions(serving_base, model_name)
    version = (versions[-1] + 1) if versions else 1
    model_base = _join(serving_base, model_name)
    staging = _join(model_base, f".staging-{version}-{uuid.uuid4().hex[:8]}")
    _copy_tree(model_dir, staging)
    target = _join(model_base, str(version))
    tf.io.gfile.rename(staging, target, overwrite=False)
    return target
