import os

import pytest

from components.push import push, served_versions


def _fake_saved_model(path):
    os.makedirs(os.path.join(path, "variables"))
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(b"graph")
    with open(os.path.join(path, "variables", "variables.index"), "wb") as f:
        f.write(b"index")
    return str(path)


def test_each_push_is_a_new_integer_version_with_the_whole_model(tmp_path):
    model = _fake_saved_model(tmp_path / "model")
    base = str(tmp_path / "serving")
    assert served_versions(base) == []
    first = push(model, base, "hanet")
    second = push(model, base, "hanet")
    assert first == os.path.join(base, "hanet", "1")
    assert second == os.path.join(base, "hanet", "2")
    assert served_versions(base, "hanet") == [1, 2]
    with open(os.path.join(second, "variables", "variables.index"), "rb") as f:
        assert f.read() == b"index"
    # Nothing but version directories is left where TF Serving looks.
    assert sorted(os.listdir(os.path.join(base, "hanet"))) == ["1", "2"]


def test_versions_continue_after_the_highest_existing_one(tmp_path):
    base = tmp_path / "serving"
    (base / "hanet" / "7").mkdir(parents=True)
    (base / "hanet" / "notes").mkdir()
    assert push(_fake_saved_model(tmp_path / "model"), str(base), "hanet").endswith(os.path.join("hanet", "8"))


def test_pushing_something_that_is_not_a_saved_model_fails_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a SavedModel"):
        push(str(tmp_path), str(tmp_path / "serving"), "hanet")
