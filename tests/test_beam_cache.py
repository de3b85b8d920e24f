"""The feature cache as a Beam job (trainer/beam_cache.py): the same cache as the in-process one
(trainer/features_cache.py), read by the trainer unchanged."""
import os

import pytest

from common import features
from tests.conftest import (
    CACHE_PRODUCTS_PER_SHARD,
    CACHE_VALIDATION_FRACTION,
    assert_same_cache,
    cache_encoders_config,
    cache_job_args,
    small_cache_shards,
)
from trainer import beam_cache, features_cache

VALIDATION_FRACTION = CACHE_VALIDATION_FRACTION
PRODUCTS_PER_SHARD = CACHE_PRODUCTS_PER_SHARD


@pytest.fixture(scope="module")
def model_config(tiny_bert_handle):
    return cache_encoders_config(tiny_bert_handle)


@pytest.fixture(scope="module")
def both_caches(small_preprocessed, tiny_bert_handle, tmp_path_factory):
    """The top-form cache (which holds the frozen form too) built in process and by Beam, with shards of
    10 products, so that each split spans several hash shards."""
    root = tmp_path_factory.mktemp("beam_cache")
    common = cache_job_args(small_preprocessed, tiny_bert_handle)
    with small_cache_shards():
        in_process = features_cache.cache_features(cache_dir=str(root / "in_process"), **common)
        # Two worker threads: batches reach the model in another composition and order than in process.
        beam = beam_cache.cache_features_beam(cache_dir=str(root / "beam"), temp_dir=str(root / "tmp"),
                                              beam_args=["--direct_num_workers=2"], **common)
    return root, in_process, beam


def test_the_beam_cache_holds_the_in_process_caches_products_in_its_order_with_its_features(both_caches):
    root, in_process, beam = both_caches
    assert beam == in_process  # the metadata: encoders, data, splits and their sizes, output shapes
    assert set(in_process["split_sizes"]) == {features.TRAIN_SPLIT, features.VALIDATION_SPLIT, features.EVAL_SPLIT}
    train_products = in_process["split_sizes"][features.TRAIN_SPLIT] + in_process["split_sizes"][features.VALIDATION_SPLIT]
    train_shards = -(-train_products // PRODUCTS_PER_SHARD)
    assert train_shards > 1
    assert_same_cache(root / "beam", root / "in_process", in_process)
    assert 1 < len(os.listdir(root / "beam" / features.TRAIN_SPLIT)) <= train_shards


def test_the_trainer_reads_the_beam_cache_in_both_forms(both_caches):
    root, in_process, _ = both_caches
    for form in (features_cache.FROZEN_FORM, features_cache.TOP_FORM):
        ids = {}
        for name in ("in_process", "beam"):
            batches = features_cache.make_feature_dataset(str(root / name), features.VALIDATION_SPLIT, 4, shuffle=False,
                                                          form=form, with_ids=True)
            ids[name] = sorted(i for _, _, batch_ids in batches for i in batch_ids.numpy())
        assert ids["beam"] == ids["in_process"] and len(ids["beam"]) == in_process["split_sizes"][features.VALIDATION_SPLIT]


def test_a_finished_beam_cache_is_reused_and_an_unfinished_one_built_again(both_caches, small_preprocessed,
                                                                            model_config, capsys):
    root, in_process, _ = both_caches
    common = dict(examples_dir=small_preprocessed.examples_dir, transform_graph_dir=small_preprocessed.transform_graph_dir,
                  model_config=model_config, validation_fraction=VALIDATION_FRACTION, batch_size=8)
    # A top cache serves frozen: nothing runs (the in-process cache's folder has no Beam scratch either).
    assert beam_cache.cache_features_beam(cache_dir=str(root / "beam"), **common) == in_process
    # A job killed before its end leaves no metadata: its shards are not read, the cache is built anew.
    unfinished = root / "unfinished"
    (unfinished / features.TRAIN_SPLIT).mkdir(parents=True)
    (unfinished / features.TRAIN_SPLIT / "part-00007.tfrecord.gz").write_bytes(b"half a shard")
    frozen = beam_cache.cache_features_beam(cache_dir=str(unfinished), temp_dir=str(root / "tmp2"), **common)
    assert not frozen["top"] and frozen["split_sizes"] == in_process["split_sizes"]
    assert not (unfinished / features.TRAIN_SPLIT / "part-00007.tfrecord.gz").exists()


def test_the_command_fails_in_one_line_on_a_missing_examples_directory(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        beam_cache.main(["--examples", str(tmp_path / "absent"), "--transform-graph", str(tmp_path / "absent"),
                         "--cache-dir", str(tmp_path / "cache")])
    assert str(raised.value).startswith("error: ") and "\n" not in str(raised.value)


def test_the_trainer_builds_its_cache_with_beam_when_given_beam_options(small_preprocessed, model_config, tmp_path,
                                                                       monkeypatch):
    from trainer.model import FROZEN
    from trainer.run_data import RunData
    from trainer.stages import TrainConfig

    def in_process(**kwargs):
        raise AssertionError("the in-process cache was built")

    monkeypatch.setattr(features_cache, "cache_features", in_process)
    config = TrainConfig(tune=FROZEN, validation_fraction=VALIDATION_FRACTION,
                         feature_cache_beam_args="--runner=DirectRunner --direct_running_mode=in_memory")
    run = RunData(examples_dir=small_preprocessed.examples_dir, transform_graph_dir=small_preprocessed.transform_graph_dir,
                  work_dir=str(tmp_path), model_config=model_config, train_config=config)
    assert not run.metadata["top"] and sum(run.metadata["split_sizes"].values()) == 48
    batches = run.dataset(FROZEN, features.TRAIN_SPLIT, 8)
    assert sum(len(labels) for _, labels in batches) == run.metadata["split_sizes"][features.TRAIN_SPLIT]
