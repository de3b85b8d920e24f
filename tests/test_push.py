"""The push stage: integer versions TF Serving loads only when whole, also when a push is killed midway;
old versions pruned; object stores (no rename) served by copying with the graph last."""
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from components.push import STAGING_PREFIX, newest_served_model, push, served_versions
from tests.conftest import REPO_ROOT


def _fake_saved_model(path, data: bytes = b"weights"):
    os.makedirs(os.path.join(path, "variables"))
    for relative, content in (
        ("saved_model.pb", b"graph"),
        ("fingerprint.pb", b"fingerprint"),
        ("variables/variables.index", b"index"),
        ("variables/variables.data-00000-of-00001", data),
    ):
        with open(os.path.join(path, relative), "wb") as f:
            f.write(content)
    return str(path)


def _tf_serving_view(model_base: str) -> list[str]:
    """What TF Serving's file-system source considers: the directories named by an integer."""
    return sorted(name for name in os.listdir(model_base) if name.isdigit())


def test_each_push_is_a_new_integer_version_with_the_whole_model(tmp_path):
    model = _fake_saved_model(tmp_path / "model")
    base = str(tmp_path / "serving")
    assert served_versions(base) == [] and newest_served_model(base) is None
    first = push(model, base, "hanet")
    second = push(model, base, "hanet")
    assert first == os.path.join(base, "hanet", "1")
    assert second == os.path.join(base, "hanet", "2")
    assert served_versions(base, "hanet") == [1, 2]
    assert newest_served_model(base, "hanet") == (2, second)
    with open(os.path.join(second, "variables", "variables.data-00000-of-00001"), "rb") as f:
        assert f.read() == b"weights"
    # Nothing but version directories is left where TF Serving looks.
    assert sorted(os.listdir(os.path.join(base, "hanet"))) == ["1", "2"]


def test_versions_continue_after_the_highest_existing_one(tmp_path):
    base = tmp_path / "serving"
    (base / "hanet" / "7").mkdir(parents=True)  # incomplete (no saved_model.pb): still never reused
    (base / "hanet" / "notes").mkdir()
    assert push(_fake_saved_model(tmp_path / "model"), str(base), "hanet").endswith(os.path.join("hanet", "8"))
    assert newest_served_model(str(base), "hanet")[0] == 8


def test_pushing_something_that_is_not_a_saved_model_fails_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a SavedModel"):
        push(str(tmp_path), str(tmp_path / "serving"), "hanet")


def test_only_the_newest_versions_are_kept(tmp_path):
    model = _fake_saved_model(tmp_path / "model")
    base = str(tmp_path / "serving")
    for _ in range(4):
        push(model, base, "hanet", keep_versions=2)
    assert served_versions(base, "hanet") == [3, 4]
    push(model, base, "hanet", keep_versions=0)  # 0 keeps all
    assert served_versions(base, "hanet") == [3, 4, 5]


def test_versions_are_readable_by_the_serving_pods_user(tmp_path):
    model = _fake_saved_model(tmp_path / "model")
    previous = os.umask(0o077)  # a restrictive umask on the pushing side
    try:
        version = push(model, str(tmp_path / "serving"), "hanet")
    finally:
        os.umask(previous)
    for directory, _, names in os.walk(version):
        assert os.stat(directory).st_mode & stat.S_IROTH and os.stat(directory).st_mode & stat.S_IXOTH
        for name in names:
            assert os.stat(os.path.join(directory, name)).st_mode & stat.S_IROTH


def test_a_push_killed_midway_never_shows_tf_serving_a_half_version(tmp_path):
    base = str(tmp_path / "serving")
    model_base = os.path.join(base, "hanet")
    good = _fake_saved_model(tmp_path / "good")
    push(good, base, "hanet")
    # A model whose weights file is a named pipe: the copy blocks opening it, so the kill below lands
    # at a known point in the middle of the push (the graph and index not copied yet).
    stuck = tmp_path / "stuck"
    _fake_saved_model(stuck)
    weights = stuck / "variables" / "variables.data-00000-of-00001"
    weights.unlink()
    os.mkfifo(weights)
    code = "import sys; from components.push import push; push(sys.argv[1], sys.argv[2], 'hanet')"
    pusher = subprocess.Popen(
        [sys.executable, "-c", code, str(stuck), base],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        deadline = time.monotonic() + 120
        staging = []
        while time.monotonic() < deadline and pusher.poll() is None:
            staging = [n for n in os.listdir(model_base) if n.startswith(STAGING_PREFIX)]
            if staging and os.path.exists(os.path.join(model_base, staging[0], "fingerprint.pb")):
                break
            time.sleep(0.05)
        assert pusher.poll() is None, "the push ended instead of blocking on the named pipe"
        assert staging, "the push never started copying"
        assert _tf_serving_view(model_base) == ["1"]  # mid-copy: only the old version is visible
    finally:
        pusher.send_signal(signal.SIGKILL)
        pusher.wait()
    assert _tf_serving_view(model_base) == ["1"]
    assert newest_served_model(base, "hanet") == (1, os.path.join(model_base, "1"))
    leftover = os.path.join(model_base, staging[0])
    assert not os.path.exists(os.path.join(leftover, "saved_model.pb"))  # the killed copy is partial

    # The next push works; the killed push's staging directory is recent, so it is left alone
    # (it could belong to a push still running) until it is older than stale_after_seconds.
    assert push(good, base, "hanet").endswith(os.path.join("hanet", "2"))
    assert os.path.isdir(leftover)
    push(good, base, "hanet", stale_after_seconds=0)
    assert not os.path.exists(leftover)
    assert _tf_serving_view(model_base) == ["1", "2", "3"]
    assert sorted(os.listdir(model_base)) == ["1", "2", "3"]


def test_an_object_store_gets_the_version_by_copy_with_the_graph_last(tmp_path, monkeypatch):
    """ram:// stands in for gs://: tf.io.gfile reads it, and like an object store it has no directory rename."""
    model = _fake_saved_model(tmp_path / "model", data=b"w" * 10_000)
    base = f"ram://{tmp_path.name}/serving"
    copied = []
    real_copy = tf.io.gfile.copy

    def recording_copy(source, target, overwrite=False):
        copied.append(target)
        real_copy(source, target, overwrite)

    monkeypatch.setattr(tf.io.gfile, "copy", recording_copy)
    for _ in range(3):
        version = push(model, base, "hanet", keep_versions=2)
    assert version == f"{base}/hanet/3"
    assert served_versions(base, "hanet") == [2, 3]
    assert sorted(n.rstrip("/") for n in tf.io.gfile.listdir(f"{base}/hanet")) == ["2", "3"]  # staging removed
    with tf.io.gfile.GFile(f"{version}/variables/variables.data-00000-of-00001", "rb") as f:
        assert f.read() == b"w" * 10_000
    into_version = [t for t in copied if t.startswith(f"{version}/")]
    assert len(into_version) == 4 and into_version[-1] == f"{version}/saved_model.pb"
