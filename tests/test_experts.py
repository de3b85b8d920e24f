"""The expert fusions (trainer/fusion.py HanetExpertsHead): HANet's attention over the text model's, the
image model's and the lexical expert's log-probabilities. The head against a NumPy re-implementation of
its M-stream equations from its own weights; its training on cross-fitted lexical scores; the exported
model, whose lexical expert reads the raw title and serves without tensorflow_text."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from common import features
from trainer import fusion

NUM_CLASSES = 4


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _log_softmax(x):
    return np.log(_softmax(x))


def _dense(layer, x):
    kernel, bias = (w.astype(np.float64) for w in layer.get_weights())
    return x @ kernel + bias


def _expert_streams(lp, k=fusion.EXPERT_PROFILE_TOP_K):
    """(v, σ, c, x) of one expert's log-probabilities, as trainer/fusion.py expert_streams."""
    spread = lp.std(-1, keepdims=True) + 1e-6
    values = (lp - lp.mean(-1, keepdims=True)) / spread
    p_top = np.exp(-np.sort(-lp, axis=-1)[:, :2])
    entropy = -(np.exp(lp) * lp).sum(-1)
    confidence = np.stack([p_top[:, 0], p_top[:, 0] - p_top[:, 1], entropy / np.log(lp.shape[-1])], -1)
    x = np.concatenate([values, -np.sort(-values, axis=-1)[:, :k], confidence], -1)
    return values, spread[:, 0], confidence, x


def _reference(head, f_t, f_i, lexical):
    """logits and s [batch, 3] of HanetExpertsHead, from its weights, by the equations in trainer/fusion.py."""
    log_probs = [np.maximum(_log_softmax(_dense(head.text_head.classifier, f_t)), fusion.EXPERT_LOG_PROB_FLOOR),
                 np.maximum(_log_softmax(_dense(head.image_head.classifier, f_i)), fusion.EXPERT_LOG_PROB_FLOOR),
                 np.maximum(lexical, fusion.EXPERT_LOG_PROB_FLOOR)]
    values, spreads, confidences, xs = zip(*(_expert_streams(lp) for lp in log_probs))
    keyless = _softmax(np.concatenate([_dense(head.keyless.scorer, _dense(v, x))
                                       for v, x in zip(head.keyless.values, xs)], -1))
    keys = [_dense(k, x) for k, x in zip(head.key_based.keys, xs)]
    queries = [_dense(q, x) for q, x in zip(head.key_based.queries, xs)]
    d_k = keys[0].shape[-1]
    raw = np.stack([(keys[m] * (sum(queries) - queries[m]) / 2).sum(-1) for m in range(3)], -1) / np.sqrt(d_k)
    key_based = _softmax(raw)
    d_inputs = np.concatenate([np.stack([keyless, key_based], -1), np.stack(confidences, 1)], -1)  # [batch, 3, 5]
    hidden = np.maximum(_dense(head.hybrid.hidden, d_inputs), 0)
    prior = head.hybrid.prior.numpy().astype(np.float64)
    spread = np.stack(spreads, 1)
    s = _softmax(_dense(head.hybrid.out, hidden)[..., 0] + prior + np.log(spread))
    scale = np.exp(float(head.product.log_temperature.numpy())) * spread.sum(-1, keepdims=True)
    return scale * (s[:, :, None] * np.stack(values, 1)).sum(1), s, log_probs


def _built_head():
    config = fusion.HeadConfig(width=5, key_dim=3, hybrid_hidden_units=4, dropout=0.0)
    head = fusion.fusion_head(features.HANET_EXPERTS, NUM_CLASSES, config)
    rng = np.random.default_rng(0)
    f_t, f_i = rng.normal(size=(6, 7)).astype(np.float32), rng.normal(size=(6, 9)).astype(np.float32)
    lexical = _log_softmax(2 * rng.normal(size=(6, NUM_CLASSES))).astype(np.float32)
    lexical[0, 1] = -1e4  # a class the expert never saw: floored
    head(f_t, f_i, lexical=lexical)
    return head, f_t, f_i, lexical, rng


def test_hanet_experts_starts_as_the_plain_product_of_the_three_experts():
    head, f_t, f_i, lexical, _ = _built_head()
    logits, s, log_probs = _reference(head, f_t.astype(np.float64), f_i.astype(np.float64), lexical.astype(np.float64))
    spread = np.stack([lp.std(-1) for lp in log_probs], 1)
    # D's output layer and the prior start at zero: each expert's share is its spread's.
    np.testing.assert_allclose(s, spread / spread.sum(-1, keepdims=True), rtol=1e-5)
    got = head(f_t, f_i, lexical=lexical).numpy()
    np.testing.assert_allclose(got, logits, rtol=1e-5, atol=1e-4)
    # ... and its class probabilities are the experts' geometric mean, softmax((log p_1 + log p_2 + log p_3) / 3):
    # the plain product's ranking.
    np.testing.assert_allclose(_softmax(got.astype(np.float64)), _softmax(sum(log_probs) / 3), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(got.argmax(-1), sum(log_probs).argmax(-1))


def test_hanet_experts_logits_and_weights_are_its_m_stream_equations_from_its_own_weights():
    head, f_t, f_i, lexical, rng = _built_head()
    head.set_weights([rng.normal(scale=0.7, size=w.shape).astype(np.float32) for w in head.get_weights()])
    logits, s, _ = _reference(head, f_t.astype(np.float64), f_i.astype(np.float64), lexical.astype(np.float64))
    assert s[:, 0].std() > 0.01  # per product, so the check covers the attention, not a constant
    np.testing.assert_allclose(head(f_t, f_i, lexical=lexical, training=False).numpy(), logits, rtol=1e-4, atol=1e-4)
    weights = head.stream_weights(f_t, f_i, lexical=lexical).numpy()
    np.testing.assert_allclose(weights, np.stack([s[:, 0] + s[:, 2], s[:, 1], s[:, 2]], -1), rtol=1e-4, atol=1e-6)
    # The decision network alone (what trains, on probabilities) gives the same logits.
    network = fusion.DecisionNetwork(head)
    p_t, p_i = _softmax(_dense(head.text_head.classifier, f_t)), _softmax(_dense(head.image_head.classifier, f_i))
    np.testing.assert_allclose(network(p_t.astype(np.float32), p_i.astype(np.float32), lexical=lexical).numpy(),
                               logits, rtol=1e-4, atol=1e-4)


def test_a_hanet_experts_model_explains_its_predictions_by_the_weights_it_applied():
    """The export serves each product's lexical_weight from trainer/model.py's explained_model: a
    hanet_experts model gives its stream weights beside the logits, the ones its logits used."""
    from trainer import model as model_lib

    head, f_t, f_i, lexical, rng = _built_head()
    inputs = [keras.Input([7]), keras.Input([9]), keras.Input([NUM_CLASSES])]
    model = keras.Model(inputs, head(inputs[0], inputs[1], lexical=inputs[2]))
    head.set_weights([rng.normal(scale=0.7, size=w.shape).astype(np.float32) for w in head.get_weights()])
    logits, s, _ = _reference(head, f_t.astype(np.float64), f_i.astype(np.float64), lexical.astype(np.float64))
    out = model_lib.explained_model(model)([f_t, f_i, lexical])
    np.testing.assert_allclose(out["logits"].numpy(), logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["stream_weights"].numpy(), np.stack([s[:, 0] + s[:, 2], s[:, 1], s[:, 2]], -1),
                               rtol=1e-4, atol=1e-6)


def test_hanet_experts_explains_a_product_without_its_training_dropout():
    """With dropout on the scorers' inputs, the weights a product is explained by are still the ones its
    served (inference) logits used, the same at every call."""
    config = fusion.HeadConfig(width=5, key_dim=3, hybrid_hidden_units=4, dropout=0.5)
    head = fusion.fusion_head(features.HANET_EXPERTS, NUM_CLASSES, config)
    _, f_t, f_i, lexical, rng = _built_head()
    head(f_t, f_i, lexical=lexical)
    head.set_weights([rng.normal(scale=0.7, size=w.shape).astype(np.float32) for w in head.get_weights()])
    _, s, _ = _reference(head, f_t.astype(np.float64), f_i.astype(np.float64), lexical.astype(np.float64))
    for _ in range(2):
        np.testing.assert_allclose(head.stream_weights(f_t, f_i, lexical=lexical).numpy(),
                                   np.stack([s[:, 0] + s[:, 2], s[:, 1], s[:, 2]], -1), rtol=1e-4, atol=1e-6)


def test_an_experts_confidence_at_two_classes_and_at_one():
    """c = (top probability, top-1 − top-2 probability, entropy / log C): with two classes the margin is
    the difference of the two; a one-class expert is certain (margin 1, entropy 0), three features still."""
    _, _, confidence, _ = fusion.expert_streams(tf.math.log(tf.constant([[0.7, 0.3]])))
    h = -(0.7 * np.log(0.7) + 0.3 * np.log(0.3)) / np.log(2)
    np.testing.assert_allclose(confidence.numpy(), [[0.7, 0.4, h]], rtol=1e-5)
    _, _, confidence, _ = fusion.expert_streams(tf.zeros([2, 1]))
    np.testing.assert_allclose(confidence.numpy(), [[1.0, 1.0, 0.0]] * 2, atol=1e-6)


def test_an_expert_without_an_opinion_has_zero_values_and_a_small_positive_spread():
    """A uniform expert (every class equally likely, or every score at the floor): nothing to
    standardize, so its values are 0 and its spread the guard 1e-6, positive, so the product's scale
    (its temperature times the spreads' sum) keeps its sign; its confidence says it knows nothing."""
    for log_probs in (tf.fill([2, 4], math.log(0.25)), tf.fill([1, 4], fusion.EXPERT_LOG_PROB_FLOOR)):
        values, spread, confidence, _ = fusion.expert_streams(log_probs)
        np.testing.assert_array_equal(values.numpy(), np.zeros(log_probs.shape))
        np.testing.assert_allclose(spread.numpy(), 1e-6, rtol=1e-3)
    np.testing.assert_allclose(confidence.numpy()[0, :2], [math.exp(fusion.EXPERT_LOG_PROB_FLOOR), 0.0], atol=1e-9)


def test_hanet_experts_refuses_to_run_without_the_lexical_scores_and_round_trips():
    head, f_t, f_i, lexical, _ = _built_head()
    # Keras wraps it in what it adds of the call: the message is a line of its own.
    with pytest.raises(ValueError, match=r"(?m)^hanet_experts fuses the lexical expert: call it with "
                                         r"lexical=<its log-probabilities>$"):
        head(f_t, f_i)
    restored = keras.layers.deserialize(keras.layers.serialize(head))
    assert type(restored) is fusion.HanetExpertsHead and restored.get_config() == head.get_config()
    restored(f_t, f_i, lexical=lexical)
    restored.set_weights(head.get_weights())
    np.testing.assert_allclose(restored(f_t, f_i, lexical=lexical).numpy(), head(f_t, f_i, lexical=lexical).numpy())


def test_a_hanet_experts_checkpoint_holds_its_weights_under_the_keys_trained_checkpoints_have(tmp_path):
    """Training resumes from, and the export loads, TF checkpoints (trainer/loop.py) read with
    expect_partial(): a weight whose key changed would silently keep its initial value. A checkpoint
    keys a layer's sublayers by attribute and its own weights by their add_weight names: these."""
    head, *_ = _built_head()
    path = tf.train.Checkpoint(head=head).write(str(tmp_path / "ckpt"))
    keys = {name.removeprefix("head/").removesuffix("/.ATTRIBUTES/VARIABLE_VALUE")
            for name, _ in tf.train.list_variables(path) if name.startswith("head/")}
    dense = ["text_head/classifier", "image_head/classifier", "keyless/scorer", "hybrid/hidden", "hybrid/out"]
    dense += [f"{layer}/{m}" for layer in ("keyless/values", "key_based/keys", "key_based/queries") for m in range(3)]
    assert keys == {f"{d}/{w}" for d in dense for w in ("kernel", "bias")} | {"hybrid/stream_prior",
                                                                               "product/log_temperature"}


def test_the_key_based_scores_over_two_streams_are_the_papers():
    """M = 2: stream t's key against stream i's query and the reverse (eq. 4–5)."""
    layer = fusion.MultiKeyBasedScores(2, 3)
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(4, 5)).astype(np.float32) for _ in range(2)]
    s = layer(xs).numpy()
    k_t, k_i = _dense(layer.keys[0], xs[0]), _dense(layer.keys[1], xs[1])
    q_t, q_i = _dense(layer.queries[0], xs[0]), _dense(layer.queries[1], xs[1])
    expected = _softmax(np.stack([(k_t * q_i).sum(-1), (k_i * q_t).sum(-1)], -1) / np.sqrt(3))
    np.testing.assert_allclose(s, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="^key-based attention needs at least two streams, got 1$"):
        fusion.MultiKeyBasedScores(1, 3)


_SERVE_SCRIPT = None  # built lazily: tests/no_tensorflow_text.py's prelude and a call of serving_default


def _serve_without_tensorflow_text(model_dir, titles, images):
    import json
    import subprocess
    import sys
    import textwrap

    from tests.no_tensorflow_text import PRELUDE

    script = PRELUDE + textwrap.dedent('''
        import base64
        model_dir, payload = sys.argv[1], json.loads(sys.stdin.read())
        unregistered = sorted(op for op in op_types(model_dir) if op_def_registry.get(op) is None)
        serve = tf.saved_model.load(model_dir).signatures["serving_default"]
        out = serve(title=tf.constant(payload["titles"]),
                    image_bytes=tf.constant([base64.b64decode(i) for i in payload["images"]]))
        print(json.dumps({"unregistered": unregistered, "logits": out["logits"].numpy().tolist(),
                          "lexical_weight": out["lexical_weight"].numpy().tolist(),
                          "tensorflow_text_loaded": any(m.startswith("tensorflow_text") for m in sys.modules)}))
    ''')
    import base64

    payload = json.dumps({"titles": titles, "images": [base64.b64encode(i).decode() for i in images]})
    result = subprocess.run([sys.executable, "-c", script, model_dir], input=payload, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _raw_eval_products(examples_dir):
    import os

    spec = {key: tf.io.FixedLenFeature([], tf.string) for key in (features.ID_KEY, features.TITLE_KEY,
                                                                   features.IMAGE_BYTES_KEY)}
    files = tf.io.gfile.glob(os.path.join(examples_dir, features.RAW_EXAMPLES_DIR, features.EVAL_SPLIT, "*"))
    products = {}
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        parsed = tf.io.parse_single_example(record, spec)
        products[parsed[features.ID_KEY].numpy()] = (parsed[features.TITLE_KEY].numpy().decode("utf-8"),
                                                      parsed[features.IMAGE_BYTES_KEY].numpy())
    return products


def test_hanet_experts_trains_on_crossfit_lexical_scores_and_serves_the_whole_train_expert_from_the_title(
        distinct_preprocessed, frozen_work, tiny_bert_handle):
    """On tests/conftest.py's frozen_work: hanet_experts trained (tune frozen) after the policy, in its
    work dir, on its cache, unimodal stages and cross-fitted folds."""
    from tests.conftest import FROZEN_FOLDS, experts_model_config, frozen_model_config, frozen_train_config
    from trainer import data, lexical
    from trainer.decision_models import probability_dataset
    from trainer.train import Run, train_stages

    model_config = experts_model_config(frozen_model_config(tiny_bert_handle))
    train_config = frozen_train_config()
    paths = {"examples_dir": distinct_preprocessed.examples_dir,
             "transform_graph_dir": distinct_preprocessed.transform_graph_dir, "work_dir": frozen_work["work"]}

    # The run's expert, as training left it: C chosen on validation, train products scored out of fold.
    run = Run(model_config=model_config, train_config=train_config, log=lambda line: None, **paths)
    expert = run.lexical_expert()
    assert expert.c in expert.validation_top1
    train_ids, train_titles, train_labels = [], [], []
    for batch in run.dataset("full", features.TRAIN_SPLIT, 64, with_ids=True):
        train_ids += list(batch[2].numpy())
    row = {product: i for i, product in enumerate(expert.ids)}
    records = lexical._split_records(f"{distinct_preprocessed.examples_dir}/{features.TRAIN_SPLIT}/*")
    by_id = {i: (t, y) for i, t, y in zip(*records)}
    train_titles = [by_id[i][0] for i in train_ids]
    train_labels = np.array([by_id[i][1] for i in train_ids])
    folds = data.fold_of(tf.constant(train_ids), FROZEN_FOLDS).numpy()
    for k in range(FROZEN_FOLDS):
        inside, outside = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        # An expert fitted without fold k (its vocabulary too): the scores the head trained on for fold k.
        vocabulary = lexical.learn_vocabulary([train_titles[i] for i in inside])
        without_k = lexical.LexicalExpert(vocabulary, *lexical._fit_weights(
            lexical.LexicalFeatures(vocabulary).numpy([train_titles[i] for i in inside]), train_labels[inside],
            expert.c, run.classes, vocabulary.size))
        stored = expert.log_probs[[row[train_ids[i]] for i in outside]]
        np.testing.assert_allclose(stored, without_k(tf.constant([train_titles[i] for i in outside])).numpy(),
                                   atol=1e-5)
        whole = expert.layer(tf.constant([train_titles[i] for i in outside])).numpy()
        assert np.abs(stored - whole).max() > 1e-3  # not the whole-train expert, which saw fold k's labels
    # ... and the decision network's training records carry exactly those scores.
    records_dir = tf.io.gfile.glob(f"{frozen_work['work']}/probabilities/crossfit{FROZEN_FOLDS}-*")[0]
    for inputs, _ in probability_dataset(records_dir, features.TRAIN_SPLIT, run.classes, 64, False, lexical=expert):
        assert {features.LEXICAL_LOG_PROBS_KEY, features.TEXT_PROBABILITIES_KEY} <= set(inputs)
    seen = [inputs for inputs, _ in probability_dataset(records_dir, features.TRAIN_SPLIT, run.classes, 64, False,
                                                        lexical=expert)]
    assert sum(len(s[features.LEXICAL_LOG_PROBS_KEY]) for s in seen) == len(train_ids)

    # The trained model (cached features, lexical scores by id) and the export (the expert on the raw
    # title, inside the graph) agree on every eval product; the export serves without tensorflow_text.
    trained = train_stages(run, features.HANET_EXPERTS, train_config.seed)[features.HANET_EXPERTS]
    expected = {}
    for logits, _, ids in run.batch_logits(trained, features.EVAL_SPLIT):
        expected.update(zip(ids, logits))
    products = _raw_eval_products(distinct_preprocessed.examples_dir)
    assert set(products) == set(expected) and len(products) >= 5
    order = sorted(products)
    served = _serve_without_tensorflow_text(frozen_work["exports"][features.HANET_EXPERTS],
                                            [products[i][0] for i in order],
                                            [products[i][1] for i in order])
    assert served["unregistered"] == [] and not served["tensorflow_text_loaded"]
    top = np.sort(np.stack([expected[i] for i in order]), axis=1)[:, ::-1][:, :len(served["logits"][0])]
    np.testing.assert_allclose(served["logits"], top, rtol=1e-3, atol=1e-3)
    assert all(0.0 <= w <= 1.0 for w in served["lexical_weight"])
