"""The push stage: a blessed model → SERVING_BASE/MODEL_NAME/VERSION/, the layout TF Serving polls.

TF Serving loads every directory under the model's base path whose name is an integer, so a version
must appear there only when it is complete. The model is first copied to a hidden staging directory
(`.staging-<version>-<start time>-<random>`, never an integer: TF Serving ignores it), checked
against the source, and then published:

- On a local or mounted file system (NFS, a PersistentVolume), by one `rename` of the staging
  directory to the version: atomic, so TF Serving sees no version or the whole of it, also if the
  push is killed at any point.
- On object stores (gs://, s3://, anything else tf.io.gfile reads) there is no rename: a "rename"
  is a copy of every object. The version is copied from the checked staging copy with
  saved_model.pb last, so until the copy ends TF Serving can find the version only without its
  graph: it cannot load a half model, it fails that attempt and retries (`--max_num_load_retries`,
  every `--load_retry_interval_micros`) while the version it serves stays up. A push killed in
  that window (seconds: server-side copies) leaves a version without saved_model.pb; the next push
  takes a higher number, which is the one TF Serving then loads, and versions beyond
  `keep_versions` are removed in time.

Staging directories of pushes killed earlier are removed once older than `stale_after_seconds`
(younger ones may belong to a push still running, and are left alone).
"""
from __future__ import annotations

import os
import posixpath
import stat
import time
import uuid

import tensorflow as tf

from common import features

SAVED_MODEL_FILE = "saved_model.pb"
STAGING_PREFIX = ".staging-"
STALE_STAGING_SECONDS = 3600
# A push that finds its version number taken by a concurrent push tries the next ones.
_PUBLISH_ATTEMPTS = 5


def _join(*parts: str) -> str:
    # posixpath for URIs (gs://...), which os.path would mangle on other platforms.
    return posixpath.join(*parts) if "://" in parts[0] else os.path.join(*parts)


def has_atomic_rename(path: str) -> bool:
    """Local and mounted file systems rename a directory in one step; object stores copy."""
    return "://" not in path or path.startswith("file://")


def _entries(directory: str) -> list[str]:
    return [name.rstrip("/") for name in tf.io.gfile.listdir(directory)] if tf.io.gfile.isdir(directory) else []


def served_versions(serving_base: str, model_name: str = features.MODEL_NAME) -> list[int]:
    """Every integer version directory, complete or not, in increasing order."""
    return sorted(int(name) for name in _entries(_join(serving_base, model_name)) if name.isdigit())


def is_complete(version_dir: str) -> bool:
    return tf.io.gfile.exists(_join(version_dir, SAVED_MODEL_FILE))


def newest_served_model(serving_base: str, model_name: str = features.MODEL_NAME) -> tuple[int, str] | None:
    """(version, directory) of the newest complete version: the one TF Serving's default policy
    (latest, one version) serves. None when nothing is served."""
    for version in reversed(served_versions(serving_base, model_name)):
        version_dir = _join(serving_base, model_name, str(version))
        if is_complete(version_dir):
            return version, version_dir
    return None


def _files(root: str) -> dict[str, int]:
    """Relative path → size of every file under root."""
    sizes = {}
    for directory, _, names in tf.io.gfile.walk(root):
        relative = os.path.relpath(directory, root)
        for name in names:
            path = name if relative == "." else _join(relative, name)
            sizes[path] = tf.io.gfile.stat(_join(directory, name)).length
    return sizes


def _copy_tree(source: str, target: str, files: dict[str, int]) -> None:
    """Copies `files` (relative paths under source), saved_model.pb last."""
    for relative in sorted(files, key=lambda path: (path == SAVED_MODEL_FILE, path)):
        destination = _join(target, relative)
        tf.io.gfile.makedirs((posixpath if "://" in target else os.path).dirname(destination))
        tf.io.gfile.copy(_join(source, relative), destination, overwrite=True)


def _verify(copy: str, expected: dict[str, int]) -> None:
    found = _files(copy)
    if found != expected:
        missing = sorted(set(expected) - set(found))
        differing = sorted(p for p in set(expected) & set(found) if expected[p] != found[p])
        raise OSError(f"the copy at {copy} does not match the model: missing {missing}, different sizes {differing}")


def _make_world_readable(root: str) -> None:
    # TF Serving's pods run as another user (k8s/: UID 1000): they must be able to read every version.
    for directory, _, names in os.walk(root):
        os.chmod(directory, os.stat(directory).st_mode | stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP
                 | stat.S_IROTH | stat.S_IXOTH)
        for name in names:
            path = os.path.join(directory, name)
            os.chmod(path, os.stat(path).st_mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def _staging_started(name: str) -> float | None:
    """The start time written in a staging directory's name (.staging-<version>-<unix time>-<random>)."""
    parts = name[len(STAGING_PREFIX):].split("-")
    return float(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def remove_stale_staging(model_base: str, stale_after_seconds: float = STALE_STAGING_SECONDS) -> list[str]:
    """Removes staging directories of pushes started more than `stale_after_seconds` ago."""
    removed = []
    now = time.time()
    for name in _entries(model_base):
        if not name.startswith(STAGING_PREFIX):
            continue
        started = _staging_started(name)
        if started is not None and now - started > stale_after_seconds:
            tf.io.gfile.rmtree(_join(model_base, name))
            removed.append(name)
    return removed


def prune_versions(serving_base: str, model_name: str, keep_versions: int) -> list[int]:
    """Removes all but the newest `keep_versions` version directories; returns the removed ones."""
    if keep_versions < 1:
        return []
    old = served_versions(serving_base, model_name)[:-keep_versions]
    for version in old:
        tf.io.gfile.rmtree(_join(serving_base, model_name, str(version)))
    return old


def _publish(staging: str, target: str, files: dict[str, int]) -> None:
    if has_atomic_rename(target):
        tf.io.gfile.rename(staging, target, overwrite=False)
        return
    _copy_tree(staging, target, files)
    _verify(target, files)
    tf.io.gfile.rmtree(staging)


def push(
    model_dir: str,
    serving_base: str,
    model_name: str = features.MODEL_NAME,
    keep_versions: int = 0,
    stale_after_seconds: float = STALE_STAGING_SECONDS,
) -> str:
    """Copies the SavedModel to the next integer version and returns that version's directory.

    `keep_versions` > 0 keeps only the newest that many versions (the new one included); 0 keeps all.
    """
    if not tf.io.gfile.exists(_join(model_dir, SAVED_MODEL_FILE)):
        raise FileNotFoundError(f"{model_dir} is not a SavedModel (no {SAVED_MODEL_FILE})")
    model_base = _join(serving_base, model_name)
    tf.io.gfile.makedirs(model_base)
    remove_stale_staging(model_base, stale_after_seconds)
    files = _files(model_dir)
    versions = served_versions(serving_base, model_name)
    version = (versions[-1] + 1) if versions else 1
    staging = _join(model_base, f"{STAGING_PREFIX}{version}-{int(time.time())}-{uuid.uuid4().hex[:8]}")
    _copy_tree(model_dir, staging, files)
    _verify(staging, files)
    if has_atomic_rename(staging):
        _make_world_readable(staging.removeprefix("file://"))
    for _ in range(_PUBLISH_ATTEMPTS):
        target = _join(model_base, str(version))
        if not tf.io.gfile.exists(target):
            try:
                _publish(staging, target, files)
                break
            except tf.errors.OpError:
                if not tf.io.gfile.exists(target):
                    raise
                # Another push took this number between the check and the rename: take the next.
        version += 1
    else:
        raise RuntimeError(f"could not publish {staging}: versions up to {version} were taken meanwhile")
    prune_versions(serving_base, model_name, keep_versions)
    return target
