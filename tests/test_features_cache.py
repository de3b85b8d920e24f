"""tune "frozen" and "top": the encoders' fixed parts cached once, heads (and top blocks) trained on
them by the one training loop, and put back on the whole encoders for serving."""
import dataclasses
import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from common import features
from common.labels import label_names
from tests.conftest import (FROZEN_FOLDS, FROZEN_VALIDATION_FRACTION, eval_records, experts_model_config,
                            frozen_model_config, frozen_train_config)
from trainer import data, export, features_cache, fusion, recipe
from trainer.loop import StageError
from trainer.model import FROZEN, TOP, fusion_layer
from trainer.train import FEATURE_CACHE_DIR, PROBABILITIES_DIR, STAGES_DIR, Run, train

TRAIN_CONFIG = frozen_train_config()  # tests/conftest.py's frozen_work was trained with it
HEAD_RECIPE = TRAIN_CONFIG.head_recipe


@pytest.fixture(scope="module")
def model_config(tiny_bert_handle):
    return frozen_model_config(tiny_bert_handle)


@pytest.fixture(scope="module")
def frozen_run(frozen_work):
    """policy (so text_only, image_only, the cross-fitted folds, then policy) on cached features;
    policy and text_only exported (tests/conftest.py's frozen_work, shared with test_experts: read it,
    or copy it before writing)."""
    return frozen_work, frozen_work["exports"], pathlib.Path(frozen_work["work"])


def _data(preprocessed) -> dict:
    return {"examples_dir": preprocessed.examples_dir, "transform_graph_dir": preprocessed.transform_graph_dir}


def _run(distinct_preprocessed, model_config, work, train_config=TRAIN_CONFIG):
    return Run(**_data(distinct_preprocessed),
               work_dir=str(work), model_config=model_config, train_config=train_config)


def _ids(run, split, form):
    return [i.decode() for _, _, ids in run.dataset(form, split, 64, shuffle=False, with_ids=True) for i in ids.numpy()]


def _served_probabilities(model_dir, distinct_preprocessed):
    parsed, labels = eval_records(distinct_preprocessed)
    predict = tf.saved_model.load(model_dir).signatures[features.TRANSFORMED_SIGNATURE]
    # Before the exported model's temperature (fitted on validation), as the trained head computes them.
    return tf.nn.softmax(predict(**parsed)[features.OUTPUT_LOGITS_KEY]).numpy(), labels


def _form_probabilities(trained, run):
    """A trained model's probabilities on the eval split, in the form it trained in (cached inputs)."""
    batches = list(run.probabilities(trained, features.EVAL_SPLIT))
    order = np.argsort(np.concatenate([ids for _, _, ids in batches]))  # by product id, as _eval_records
    return (np.concatenate([p for p, _, _ in batches])[order],
            np.concatenate([labels for _, labels, _ in batches])[order])


def test_every_split_is_cached_once_per_product_and_validation_is_carved_from_train(frozen_run, distinct_preprocessed,
                                                                                   model_config):
    _, _, work = frozen_run
    metadata = features_cache.read_metadata(str(work / FEATURE_CACHE_DIR))
    sizes = metadata["split_sizes"]
    kept = distinct_preprocessed.metrics["kept"]
    assert sizes[features.TRAIN_SPLIT] + sizes[features.VALIDATION_SPLIT] == kept["train"]
    assert sizes[features.EVAL_SPLIT] == kept["eval"]
    assert sizes[features.VALIDATION_SPLIT] > 0 and metadata["image_dim"] == 1280 and metadata["text_dim"] > 0
    run = _run(distinct_preprocessed, model_config, work)
    train_ids, validation_ids = _ids(run, features.TRAIN_SPLIT, FROZEN), _ids(run, features.VALIDATION_SPLIT, FROZEN)
    assert not set(train_ids) & set(validation_ids)
    in_validation = data.in_validation(tf.constant(train_ids + validation_ids), FROZEN_VALIDATION_FRACTION).numpy()
    assert not in_validation[:len(train_ids)].any() and in_validation[len(train_ids):].all()
    # The same split as the full form reads from the records, with no copy of them.
    assert sorted(_ids(run, features.VALIDATION_SPLIT, "full")) == sorted(validation_ids)


@pytest.mark.parametrize("stage", [fusion.POLICY, fusion.TEXT_ONLY])
def test_the_exported_model_is_the_trained_head_on_the_live_encoders(frozen_run, model_config, distinct_preprocessed,
                                                                    stage):
    """Serving recomputes f_t, f_i from raw records: the trained head's probabilities on the cache."""
    _, exports, work = frozen_run
    served, labels = _served_probabilities(exports[stage], distinct_preprocessed)
    run = _run(distinct_preprocessed, model_config, work)
    from trainer.train import train_stages

    trained = train_stages(run, stage, TRAIN_CONFIG.seed)[stage]  # every stage is loaded, none trained again
    cached, cached_labels = _form_probabilities(trained, run)
    np.testing.assert_array_equal(labels, cached_labels)  # the same products, side by side
    np.testing.assert_allclose(served, cached, rtol=1e-4, atol=1e-5)


def test_decision_heads_train_on_out_of_fold_unimodal_predictions(frozen_run, model_config, distinct_preprocessed):
    """Each train product's probabilities come from the fold models that never saw it."""
    _, _, work = frozen_run
    run = _run(distinct_preprocessed, model_config, work)
    folds = run.crossfit_unimodal(TRAIN_CONFIG.seed)  # finished: loaded
    records = work / PROBABILITIES_DIR / f"crossfit{FROZEN_FOLDS}-seed{TRAIN_CONFIG.seed}"
    sizes = json.loads((records / "sizes.json").read_text())
    assert sizes == {"train": run.split_sizes()["train"], "validation": run.split_sizes()["validation"]}
    spec = {features.ID_KEY: tf.io.FixedLenFeature([], tf.string),
            features.TEXT_PROBABILITIES_KEY: tf.io.FixedLenFeature([run.classes], tf.float32)}
    stored = {r[features.ID_KEY].decode(): r[features.TEXT_PROBABILITIES_KEY] for r in tf.data.TFRecordDataset(
        tf.io.gfile.glob(str(records / "train" / "*")), "GZIP").map(
        lambda s: tf.io.parse_single_example(s, spec)).as_numpy_iterator()}
    for fold, models in folds.items():
        def in_fold(ids, f=fold):
            return tf.equal(data.fold_of(ids, FROZEN_FOLDS), f)

        held_out = [i for _, _, i in run.probabilities(models[fusion.TEXT_ONLY], features.TRAIN_SPLIT, keep=in_fold)]
        for probabilities, _, ids in run.probabilities(models[fusion.TEXT_ONLY], features.TRAIN_SPLIT, keep=in_fold):
            for p, i in zip(probabilities, ids):
                np.testing.assert_allclose(stored[i.decode()], p, rtol=1e-5, atol=1e-6)
        assert held_out


def test_a_fold_model_is_the_same_whatever_the_labels_of_the_fold_it_holds_out(frozen_run, model_config,
                                                                              distinct_preprocessed, tmp_path):
    """Cross-fitting's promise: the model of fold f never saw fold f's products. In a copy of the cache
    fold 0's products get other labels: fold 0's model is the same to the bit, fold 1's (which trains
    on them) is not."""
    import shutil

    _, _, work = frozen_run
    classes = _run(distinct_preprocessed, model_config, work).classes
    altered = tmp_path / "altered-cache"
    shutil.copytree(work / FEATURE_CACHE_DIR, altered)
    relabelled = 0
    for path in tf.io.gfile.glob(str(altered / features.TRAIN_SPLIT / "*")):
        examples = [tf.train.Example.FromString(r) for r in tf.data.TFRecordDataset(path, "GZIP").as_numpy_iterator()]
        with tf.io.TFRecordWriter(path, "GZIP") as writer:
            for example in examples:
                feature = example.features.feature
                if data.fold_of(tf.constant(feature[features.ID_KEY].bytes_list.value), FROZEN_FOLDS).numpy()[0] == 0:
                    label = feature[features.LABEL_ID_KEY].int64_list.value
                    label[0] = (label[0] + 1) % classes
                    relabelled += 1
                writer.write(example.SerializeToString())
    assert relabelled > 0
    weights = {}
    for name, cache in (("original", work / FEATURE_CACHE_DIR), ("altered", altered)):
        run = Run(**_data(distinct_preprocessed),
                  work_dir=str(tmp_path / name), model_config=model_config, train_config=TRAIN_CONFIG,
                  cache_dir=str(cache))
        folds = run.crossfit_unimodal(0, names=(fusion.TEXT_ONLY,))
        weights[name] = {fold: models[fusion.TEXT_ONLY].model.get_weights() for fold, models in folds.items()}
    for a, b in zip(weights["original"][0], weights["altered"][0]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(weights["original"][1], weights["altered"][1]))


def test_cross_fitted_folds_train_the_epochs_their_whole_split_model_kept(frozen_run, model_config,
                                                                         distinct_preprocessed, tmp_path):
    """A fold repeats the early-stopped model's kept epochs, without validation passes of its own."""
    _, _, work = frozen_run
    config = dataclasses.replace(TRAIN_CONFIG, patience=1, head_recipe=dataclasses.replace(HEAD_RECIPE, epochs=4))
    run = Run(**_data(distinct_preprocessed),
              work_dir=str(tmp_path), model_config=model_config, train_config=config,
              cache_dir=str(work / FEATURE_CACHE_DIR))
    whole = run.train_feature_model(fusion.TEXT_ONLY, config.head_recipe, str(tmp_path / "whole"), seed=0)
    kept = whole.logs["best_epoch"]
    assert 1 <= kept <= whole.logs["epochs"]
    folds = run.crossfit_unimodal(0, names=(fusion.TEXT_ONLY,), whole={fusion.TEXT_ONLY: whole})
    for fold, models in folds.items():
        logs = models[fusion.TEXT_ONLY].logs
        assert logs["epochs"] == kept and "val_accuracy" not in logs, logs
        stage = tmp_path / STAGES_DIR / "seed0" / f"text_only-fold{fold}of{FROZEN_FOLDS}"
        assert json.loads((stage / "settings.json").read_text())["epochs_of_whole_split_model"] == kept
        # No validation in a fold: the last epoch's checkpoint is also the best, and the only one kept.
        assert sorted(os.listdir(stage / "checkpoints")) == sorted(
            {f"epoch-{kept:03d}.index", f"epoch-{kept:03d}.data-00000-of-00001", "checkpoint", "kept.json"})


def test_a_seed_fixes_the_trained_model_whatever_ran_before_it_in_the_process(
        frozen_run, model_config, distinct_preprocessed, tmp_path):
    """The initial weights are drawn under the seed too, not from whatever state earlier work left."""
    _, _, work = frozen_run
    run = Run(**_data(distinct_preprocessed),
              work_dir=str(tmp_path), model_config=model_config, train_config=TRAIN_CONFIG,
              cache_dir=str(work / FEATURE_CACHE_DIR))
    trained = {}
    for attempt in ("first", "second"):
        tf.random.uniform([3 if attempt == "first" else 5])  # other work draws from the generators in between
        trained[attempt] = run.train_feature_model(fusion.HANET, HEAD_RECIPE, str(tmp_path / attempt), seed=5)
    weights = [t.model.get_weights() for t in trained.values()]
    assert len(weights[0]) == len(weights[1]) > 0
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)


def test_another_fusion_in_the_same_work_dir_reuses_the_cache_and_the_unimodal_stages(
        frozen_run, model_config, distinct_preprocessed):
    """hanet_experts, trained second in the policy's work dir (tests/conftest.py's frozen_work) with
    other head options than the policy's: the unimodal stages do not depend on them. Its export is
    the trained model on every eval product: test_experts checks that on this same work dir."""
    frozen, _, work = frozen_run
    out = frozen["experts_log"]
    assert "[text_only] already trained" in out and "[image_only] already trained" in out
    assert "[cache]" not in out  # the feature cache is reused as it is
    assert f"[{features.HANET_EXPERTS}] starting at step 0" in out
    run = _run(distinct_preprocessed, experts_model_config(model_config), work)
    from trainer.train import train_stages

    trained = train_stages(run, features.HANET_EXPERTS, TRAIN_CONFIG.seed)  # loaded, none trained again
    assert np.isfinite(trained[features.HANET_EXPERTS].logs["loss"])
    head = fusion_layer(trained[features.HANET_EXPERTS].model)
    for unimodal, inner in ((fusion.TEXT_ONLY, head.text_head), (fusion.IMAGE_ONLY, head.image_head)):
        for a, b in zip(inner.get_weights(), fusion_layer(trained[unimodal].model).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_a_work_dir_of_other_data_is_refused_and_a_cache_of_other_data_rebuilt(
        frozen_run, model_config, distinct_preprocessed, tmp_path, capsys):
    """The same settings on other examples (the train split without its first 3 products), in a copy
    of the work dir."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(frozen_run[2], work)

    examples = tmp_path / "examples"
    shutil.copytree(distinct_preprocessed.examples_dir, examples)
    (train_file,) = tf.io.gfile.glob(str(examples / features.TRAIN_SPLIT / "*"))
    records = list(tf.data.TFRecordDataset(train_file, "GZIP").as_numpy_iterator())[3:]
    with tf.io.TFRecordWriter(train_file, "GZIP") as writer:
        for record in records:
            writer.write(record)
    capsys.readouterr()
    other = Run(examples_dir=str(examples), transform_graph_dir=distinct_preprocessed.transform_graph_dir,
                work_dir=str(work), model_config=model_config, train_config=TRAIN_CONFIG)
    out = capsys.readouterr().out
    assert f"[cache] rebuilding {work / FEATURE_CACHE_DIR}: it was built for other data" in out
    assert other.split_sizes()["train"] + other.split_sizes()["validation"] == len(records)
    with pytest.raises(StageError, match="trained with other data: use another work directory"):
        other.train_feature_model(fusion.TEXT_ONLY, HEAD_RECIPE, str(work / STAGES_DIR / fusion.TEXT_ONLY),
                                  seed=TRAIN_CONFIG.seed)


def test_a_frozen_cache_asked_for_top_says_it_lacks_the_top_inputs_not_other_encoders(
        frozen_run, model_config, distinct_preprocessed, capsys):
    _, _, work = frozen_run
    cache_dir = str(work / FEATURE_CACHE_DIR)
    metadata = features_cache.read_metadata(cache_dir)
    wanted = {"encoders": model_config.encoder_fields(True), "data": metadata["data"],
              "validation_fraction": metadata["validation_fraction"]}
    capsys.readouterr()
    assert features_cache._reusable(cache_dir, wanted, True, features_cache.SPLITS) is None
    out = capsys.readouterr().out
    assert out == f"[cache] rebuilding {cache_dir}: it holds no inputs of the top blocks (built for tune frozen)\n"
    other = dict(wanted, encoders=dict(wanted["encoders"], image_size=64))
    assert features_cache._reusable(cache_dir, other, True, features_cache.SPLITS) is None
    assert "it was built for other encoders; it holds no inputs of the top blocks" in capsys.readouterr().out
    frozen = dict(wanted, encoders=model_config.encoder_fields(False))
    assert features_cache._reusable(cache_dir, frozen, False, metadata["split_sizes"]) == metadata


def test_the_warmup_file_holds_real_requests_that_the_served_model_answers(frozen_run, distinct_preprocessed):
    from tensorflow_serving.apis import prediction_log_pb2

    _, exports, _ = frozen_run
    path = os.path.join(exports[fusion.POLICY], export.WARMUP_FILE)
    model = tf.saved_model.load(exports[fusion.POLICY])
    labels = set(label_names(tft.TFTransformOutput(distinct_preprocessed.transform_graph_dir)))
    signatures = []
    for record in tf.data.TFRecordDataset(path):
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        assert request.model_spec.name == features.MODEL_NAME
        inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
        if features.TITLE_KEY in inputs:
            assert all(title.strip() for title in inputs[features.TITLE_KEY].numpy())
            assert all(tf.io.decode_jpeg(image).shape[-1] == 3 for image in inputs[features.IMAGE_BYTES_KEY])
        out = model.signatures[request.model_spec.signature_name](**inputs)
        batch = next(iter(inputs.values())).shape[0]
        assert out[features.OUTPUT_CLASSES_KEY].shape == (batch, min(features.DEFAULT_TOP_K, len(labels)))
        assert {c.decode() for c in out[features.OUTPUT_CLASSES_KEY].numpy().ravel()} <= labels
        signatures.append((request.model_spec.signature_name, batch))
    n = export.WARMUP_PRODUCTS
    assert signatures == [(features.SERVING_SIGNATURE, 1)] * n + [(features.SERVING_SIGNATURE, n),
                                                                  (features.TF_EXAMPLE_SIGNATURE, n)]


@pytest.fixture(scope="module")
def top_run(distinct_preprocessed, model_config, tmp_path_factory):
    """hanet under tune "top": the unimodal models (head, then last blocks), then the fusion from them."""
    root = tmp_path_factory.mktemp("top")
    config = dataclasses.replace(TRAIN_CONFIG, tune=TOP, head_recipe=HEAD_RECIPE,
                                 text_recipe=recipe.Recipe(learning_rate=1e-3, epochs=2, batch_size=8),
                                 image_recipe=recipe.Recipe(learning_rate=1e-3, epochs=2, batch_size=8),
                                 fusion_recipe=recipe.Recipe(learning_rate=1e-3, epochs=2, batch_size=8))
    hanet = dataclasses.replace(model_config, fusion=fusion.HANET)
    train(**_data(distinct_preprocessed),
          export_dir=str(root / "hanet"), work_dir=str(root / "work"), model_config=hanet, train_config=config)
    return root, hanet, config


def test_tune_top_exports_the_whole_encoders_with_the_tuned_blocks(top_run, distinct_preprocessed, tiny_bert_handle):
    root, hanet, config = top_run
    run = _run(distinct_preprocessed, hanet, root / "work", config)
    from trainer.train import train_stages

    trained = train_stages(run, fusion.HANET, config.seed)[fusion.HANET]
    assert trained.form == TOP
    # The served model runs the whole TF-Hub encoder and EfficientNet on raw records and matches the
    # tuned model on the cached (float16) inputs of its top blocks.
    served, labels = _served_probabilities(str(root / "hanet"), distinct_preprocessed)
    cached, cached_labels = _form_probabilities(trained, run)
    np.testing.assert_array_equal(labels, cached_labels)
    np.testing.assert_allclose(served, cached, atol=2e-3)
    # ... and the blocks did tune: with the pretrained last BERT block back, the model answers otherwise.
    from trainer import encoders

    text_top = trained.model.get_layer("text_top")
    tuned = [w.numpy() for w in text_top.weights]
    text_top.load_from(encoders.text_encoder(str(tiny_bert_handle), trainable=True))
    assert max(np.abs(a - w.numpy()).max() for a, w in zip(tuned, text_top.weights)) > 1e-3
    pretrained_top, _ = _form_probabilities(trained, run)
    assert np.abs(pretrained_top - served).max() > 10 * np.abs(cached - served).max()


def test_a_cache_built_for_top_serves_frozen_without_rebuilding(top_run, distinct_preprocessed, capsys):
    root, hanet, config = top_run
    capsys.readouterr()
    metadata = features_cache.cache_features(
        **_data(distinct_preprocessed),
        cache_dir=str(root / "work" / FEATURE_CACHE_DIR), model_config=hanet, top=False,
        validation_fraction=config.validation_fraction)
    assert metadata["top"] and "[cache]" not in capsys.readouterr().out


def test_the_poe_features_of_a_top_run_are_the_image_features_alone(top_run, distinct_preprocessed, tmp_path):
    """What the evaluate stage is sent instead of the work directory (write_poe_features): the ids and
    f_i of the splits tfidf_image_poe fits on; not the checkpoints, the backups, f_t or the inputs of
    the top blocks, which the top run's work directory holds beside them."""
    root, _, _ = top_run
    work, poe_dir = root / "work", tmp_path / "poe_features"
    cache = features_cache.read_metadata(str(work / FEATURE_CACHE_DIR))
    written = features_cache.write_poe_features(str(work / FEATURE_CACHE_DIR),
                                                distinct_preprocessed.transform_graph_dir, str(poe_dir))
    assert cache["top"] and written["split_sizes"] == cache["split_sizes"] and set(cache["split_sizes"]) == set(
        features_cache.SPLITS)
    files = {p.name: p.stat().st_size for p in poe_dir.iterdir()}
    assert set(files) == {features_cache.POE_METADATA_FILE, *(
        os.path.basename(features_cache.poe_split_file(str(poe_dir), s)) for s in features_cache.SPLITS)}
    # Each split's file is its products' float32 f_i and ids, and a few hundred bytes of zip and npy headers.
    for split, products in cache["split_sizes"].items():
        path = features_cache.poe_split_file(str(poe_dir), split)
        with np.load(path) as archive:
            payload = products * cache["image_dim"] * 4 + archive[features_cache.POE_IDS_KEY].nbytes
        assert payload <= files[os.path.basename(path)] <= payload + 1024, split
    assert files[features_cache.POE_METADATA_FILE] < 1024
    sizes = {name: sum(p.stat().st_size for p in (work / name).rglob("*") if p.is_file())
             for name in (FEATURE_CACHE_DIR, STAGES_DIR)}
    assert sum(files.values()) < sizes[STAGES_DIR] / 10
