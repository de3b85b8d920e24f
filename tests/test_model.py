"""Model assembly: the fusion heads on live encoders, and starting a fusion from the unimodal models."""
import numpy as np
import pytest
import tensorflow as tf

from trainer import fusion
import tf_keras as keras

from trainer.model import TEXT_ENCODER_LAYER, ModelConfig, build_model, fusion_layer, init_from_unimodal

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def config(tiny_bert_handle):
    return ModelConfig(bert_handle=str(tiny_bert_handle), image_weights=None, image_size=32, max_seq_length=8,
                       head=fusion.HeadConfig(width=16))


def image_encoder_layer(model):
    (cnn,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return cnn


def _randomize(layer):
    layer.set_weights([np.random.default_rng(0).normal(size=w.shape).astype(w.dtype.as_numpy_dtype)
                       for w in layer.weights])


def _assert_same_weights(a, b):
    assert len(a.weights) == len(b.weights) > 0
    for x, y in zip(sorted(a.weights, key=lambda w: w.name), sorted(b.weights, key=lambda w: w.name)):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_a_fusion_starts_from_the_encoders_of_the_trained_unimodal_models(config):
    import dataclasses

    text_model = build_model(dataclasses.replace(config, fusion=fusion.TEXT_ONLY), NUM_CLASSES)
    image_model = build_model(dataclasses.replace(config, fusion=fusion.IMAGE_ONLY), NUM_CLASSES)
    # Stand-ins for fine-tuning: weights no fresh encoder has.
    _randomize(text_model.get_layer(TEXT_ENCODER_LAYER))
    _randomize(image_encoder_layer(image_model))
    _randomize(fusion_layer(text_model))
    _randomize(fusion_layer(image_model))
    decision = build_model(dataclasses.replace(config, fusion=fusion.DECISION_LEVEL), NUM_CLASSES)

    init_from_unimodal(decision, text_model, image_model)

    _assert_same_weights(decision.get_layer(TEXT_ENCODER_LAYER), text_model.get_layer(TEXT_ENCODER_LAYER))
    _assert_same_weights(image_encoder_layer(decision), image_encoder_layer(image_model))
    _assert_same_weights(fusion_layer(decision).text_head, fusion_layer(text_model))
    _assert_same_weights(fusion_layer(decision).image_head, fusion_layer(image_model))
    # The decision-level model fuses fixed unimodal models: only its decision network trains.
    assert {w.name.split("/")[1] for w in decision.trainable_weights} == {"decision_hidden", "classifier"}
    # And it predicts from them: with the same inputs its unimodal probabilities are theirs.
    inputs = {key: tf.ones([2, config.max_seq_length], tf.int32) for key in ("input_word_ids", "input_mask")}
    inputs["input_type_ids"] = tf.zeros([2, config.max_seq_length], tf.int32)
    inputs["image"] = tf.random.uniform([2, 32, 32, 3], 0, 255, seed=1)
    f_t = text_model.get_layer(TEXT_ENCODER_LAYER)({k: v for k, v in inputs.items() if k != "image"})["pooled_output"]
    p_t, _ = fusion_layer(decision).unimodal_probabilities(f_t, image_encoder_layer(decision)(inputs["image"]))
    np.testing.assert_allclose(p_t.numpy(), tf.nn.softmax(text_model(inputs)).numpy(), rtol=1e-5, atol=1e-6)


def test_an_unknown_fusion_is_rejected_when_configured():
    with pytest.raises(ValueError, match="unknown fusion 'late'.*decision_level"):
        ModelConfig(fusion="late")


def test_mean_text_pooling_averages_the_token_outputs_of_the_title_only(config):
    import dataclasses

    from trainer.model import encoder_model

    encoders = encoder_model(dataclasses.replace(config, text_pooling="mean"))
    ids = tf.constant([[101, 2304, 3797, 102, 0, 0, 0, 0]], tf.int32)
    mask = tf.cast(ids > 0, tf.int32)
    inputs = {"input_word_ids": ids, "input_mask": mask, "input_type_ids": tf.zeros_like(ids),
              "image": tf.zeros([1, 32, 32, 3])}
    f_t = encoders(inputs)["text_features"].numpy()
    tokens = encoders.get_layer(TEXT_ENCODER_LAYER)({k: v for k, v in inputs.items() if k != "image"})
    expected = tokens["sequence_output"].numpy()[0, :4].mean(0)  # the 4 real tokens, not the padding
    np.testing.assert_allclose(f_t[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", fusion.PAPER_FUSIONS)
def test_every_fusion_head_saves_to_a_savedmodel_that_reproduces_it(name, config, tmp_path):
    """The exported models differ only by their head: each head traces into a SavedModel signature."""
    import dataclasses

    from trainer.model import head_model

    head = head_model(dataclasses.replace(config, fusion=name), NUM_CLASSES, text_dim=12, image_dim=20)
    inputs = {"text_features": tf.random.normal([3, 12], seed=1), "image_features": tf.random.normal([3, 20], seed=2)}
    expected = head(inputs, training=False).numpy()
    signature = tf.function(lambda x: head(x, training=False),
                            input_signature=[{k: tf.TensorSpec([None, v.shape[1]], name=k) for k, v in inputs.items()}])
    head.save(str(tmp_path), save_format="tf", save_traces=False, signatures={"serving_default": signature})
    served = tf.saved_model.load(str(tmp_path)).signatures["serving_default"](**inputs)
    np.testing.assert_allclose(next(iter(served.values())).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [*fusion.ATTENTION_FUSIONS, fusion.POLICY, fusion.CONCAT, fusion.TEXT_ONLY])
def test_the_explained_model_returns_the_logits_and_the_weights_the_head_applied(config, name):
    import dataclasses

    from trainer.model import explained_model, head_model

    model = head_model(dataclasses.replace(config, fusion=name), NUM_CLASSES, text_dim=6, image_dim=10)
    rng = np.random.default_rng(1)
    # Small weights, so that no softmax saturates and the weights differ between products.
    fusion_layer(model).set_weights([0.3 * rng.normal(size=w.shape) for w in fusion_layer(model).weights])
    batch = {"text_features": rng.normal(size=(4, 6)).astype("float32"),
             "image_features": rng.normal(size=(4, 10)).astype("float32")}
    outputs = explained_model(model)(batch, training=False)
    np.testing.assert_allclose(outputs["logits"].numpy(), model(batch, training=False).numpy(), rtol=1e-6)
    if name in (*fusion.ATTENTION_FUSIONS, fusion.POLICY):
        weights = outputs["stream_weights"].numpy()
        assert weights.shape == (4, 2)
        np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)  # softmax over the two streams
        assert len(np.unique(weights[:, 0].round(6))) > 1  # per product, not a constant
    else:
        assert set(outputs) == {"logits"}
