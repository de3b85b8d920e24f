"""The frozen-encoder mode: features cached once, heads trained on them, put back on the encoders."""
import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from common import features
from trainer import export, features_cache, fusion, recipe
from trainer.model import ModelConfig, fusion_layer, head_model
from common.labels import label_names, num_classes
from trainer.train import FEATURE_CACHE_DIR, FINAL_WEIGHTS, STAGES_DIR, TrainConfig, train

HEAD_RECIPE = recipe.Recipe(learning_rate=1e-3, epochs=3, batch_size=8)
TRAIN_CONFIG = TrainConfig(
    text=HEAD_RECIPE,
    image=dataclasses.replace(recipe.PAPER_IMAGE, learning_rate=0.01, epochs=3, batch_size=8, decay_epochs=2),
    fusion=HEAD_RECIPE,
    frozen_encoders=True,
)


@pytest.fixture(scope="module")
def model_config(tiny_bert_handle):
    return ModelConfig(fusion=fusion.POLICY, bert_handle=str(tiny_bert_handle), image_weights=None, image_size=32,
                       max_seq_length=24, fusion_width=16)


@pytest.fixture(scope="module")
def frozen_run(small_preprocessed, model_config, tmp_path_factory):
    """policy (so text_only, image_only, then policy) on cached features; policy and text_only exported
    (image_only's export is the same code with the other head, and costs another EfficientNet trace)."""
    root = tmp_path_factory.mktemp("frozen")
    exports = {stage: str(root / stage) for stage in (fusion.POLICY, fusion.TEXT_ONLY)}
    logs = train(
        examples_dir=small_preprocessed.examples_dir,
        transform_graph_dir=small_preprocessed.transform_graph_dir,
        export_dir=exports[fusion.POLICY],
        work_dir=str(root / "work"),
        model_config=model_config,
        train_config=TRAIN_CONFIG,
        unimodal_export_dirs={fusion.TEXT_ONLY: exports[fusion.TEXT_ONLY]},
    )
    return logs, exports, root / "work"


def _cached_eval(work):
    dataset = features_cache.make_feature_dataset(str(work / FEATURE_CACHE_DIR), features.EVAL_SPLIT, 64, shuffle=False)
    batches = list(dataset)
    inputs = {key: tf.concat([b[0][key] for b in batches], 0) for key in batches[0][0]}
    return inputs, tf.concat([b[1] for b in batches], 0).numpy()


def _trained_head(work, model_config, stage, small_preprocessed):
    """The stage's head, built as its settings.json says, with its final weights."""
    metadata = features_cache.read_metadata(str(work / FEATURE_CACHE_DIR))
    classes = num_classes(tft.TFTransformOutput(small_preprocessed.transform_graph_dir))
    settings = json.loads((work / STAGES_DIR / stage / "settings.json").read_text())["model"]
    head = head_model(dataclasses.replace(model_config, **settings), classes, metadata["text_dim"],
                      metadata["image_dim"])
    head.load_weights(str(work / STAGES_DIR / stage / FINAL_WEIGHTS)).expect_partial()
    return head


def _exported_probabilities(model_dir, small_preprocessed):
    spec = tft.TFTransformOutput(small_preprocessed.transform_graph_dir).transformed_feature_spec()
    spec = {key: spec[key] for key in (*features.BERT_INPUT_KEYS, features.IMAGE_KEY, features.LABEL_ID_KEY)}
    files = tf.io.gfile.glob(os.path.join(small_preprocessed.examples_dir, features.EVAL_SPLIT, "*"))
    batch = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1000)))
    parsed = tf.io.parse_example(batch, spec)
    labels = parsed.pop(features.LABEL_ID_KEY).numpy()
    predict = tf.saved_model.load(model_dir).signatures[features.TRANSFORMED_SIGNATURE]
    return predict(**parsed)[features.OUTPUT_PROBABILITIES_KEY].numpy(), labels


def test_every_split_is_cached_once_per_product(frozen_run, small_preprocessed):
    _, _, work = frozen_run
    metadata = features_cache.read_metadata(str(work / FEATURE_CACHE_DIR))
    assert metadata["split_sizes"] == {split: small_preprocessed.metrics["kept"][split]
                                       for split in (features.TRAIN_SPLIT, features.EVAL_SPLIT)}
    assert metadata["image_dim"] == 1280 and metadata["text_dim"] > 0


@pytest.mark.parametrize("stage", [fusion.POLICY, fusion.TEXT_ONLY])
def test_the_exported_model_is_the_trained_head_on_the_live_encoders(frozen_run, model_config, small_preprocessed,
                                                                    stage):
    """Serving recomputes f_t, f_i from raw records: equal to the cache, and the head is the trained one."""
    _, exports, work = frozen_run
    served, labels = _exported_probabilities(exports[stage], small_preprocessed)
    cached, cached_labels = _cached_eval(work)
    np.testing.assert_array_equal(labels, cached_labels)  # the cache keeps the records' order
    trained = tf.nn.softmax(_trained_head(work, model_config, stage, small_preprocessed)(cached)).numpy()
    np.testing.assert_allclose(served, trained, rtol=1e-4, atol=1e-5)


def test_the_warmup_file_holds_real_requests_that_the_served_model_answers(frozen_run, small_preprocessed):
    from tensorflow_serving.apis import prediction_log_pb2

    _, exports, _ = frozen_run
    path = os.path.join(exports[fusion.POLICY], export.WARMUP_FILE)
    model = tf.saved_model.load(exports[fusion.POLICY])
    labels = set(label_names(tft.TFTransformOutput(small_preprocessed.transform_graph_dir)))
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
        assert out[features.OUTPUT_CLASSES_KEY].shape == (batch, features.DEFAULT_TOP_K)
        assert {c.decode() for c in out[features.OUTPUT_CLASSES_KEY].numpy().ravel()} <= labels
        signatures.append((request.model_spec.signature_name, batch))
    n = export.WARMUP_PRODUCTS
    assert signatures == [(features.SERVING_SIGNATURE, 1)] * n + [(features.SERVING_SIGNATURE, n),
                                                                  (features.TF_EXAMPLE_SIGNATURE, n)]


def test_another_fusion_in_the_same_work_dir_reuses_the_cache_and_the_unimodal_stages(
        frozen_run, model_config, small_preprocessed, tmp_path, capsys):
    _, _, work = frozen_run
    logs = train(
        examples_dir=small_preprocessed.examples_dir,
        transform_graph_dir=small_preprocessed.transform_graph_dir,
        export_dir=str(tmp_path / "decision"),
        work_dir=str(work),
        # Other head options than the policy's run: the unimodal stages do not depend on them.
        model_config=dataclasses.replace(model_config, fusion=fusion.DECISION_LEVEL, fusion_width=8),
        train_config=TRAIN_CONFIG,
    )
    out = capsys.readouterr().out
    assert "[text_only] already trained" in out and "[image_only] already trained" in out
    assert "[decision_level] starting at step 0" in out and np.isfinite(logs[fusion.DECISION_LEVEL]["loss"])
    decision = _trained_head(work, model_config, fusion.DECISION_LEVEL, small_preprocessed)
    for stage, head in ((fusion.TEXT_ONLY, fusion_layer(decision).text_head),
                        (fusion.IMAGE_ONLY, fusion_layer(decision).image_head)):
        trained = fusion_layer(_trained_head(work, model_config, stage, small_preprocessed))
        for a, b in zip(head.get_weights(), trained.get_weights()):
            np.testing.assert_array_equal(a, b)
    served, _ = _exported_probabilities(str(tmp_path / "decision"), small_preprocessed)
    cached, _ = _cached_eval(work)
    np.testing.assert_allclose(served, tf.nn.softmax(decision(cached)).numpy(), rtol=1e-4, atol=1e-5)


def test_a_cache_of_other_encoders_is_refused_by_name(frozen_run, model_config, small_preprocessed):
    _, _, work = frozen_run
    with pytest.raises(ValueError, match="other encoders \\(different image_size, max_seq_length\\)"):
        features_cache.cache_features(
            examples_dir=small_preprocessed.examples_dir,
            transform_graph_dir=small_preprocessed.transform_graph_dir,
            cache_dir=str(work / FEATURE_CACHE_DIR),
            model_config=dataclasses.replace(model_config, image_size=64, max_seq_length=16),
        )
