"""The fusion heads against HANET.md: each layer on hand-computed cases, each whole head against a NumPy
re-implementation of the paper's equations from the head's own weights, and the registry, configs and
saved models (also those saved before one class per fusion)."""
import dataclasses
import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer import fusion


def _set_dense(layer, kernel, bias):
    layer.set_weights([np.asarray(kernel, np.float32), np.asarray(bias, np.float32)])


def test_keyless_scores_are_a_softmax_of_linear_scores_hand_computed():
    layer = fusion.KeylessScores()
    v_t = tf.constant([[1.0, 0.0]])
    v_i = tf.constant([[0.0, 1.0]])
    layer(v_t, v_i)
    _set_dense(layer.text_scorer, [[2.0], [1.0]], [0.5])  # rs_t = 2 + 0.5, rs_i = 1 + 0.5
    scores = layer(v_t, v_i).numpy()
    expected = np.exp([2.5, 1.5]) / np.exp([2.5, 1.5]).sum()
    np.testing.assert_allclose(scores[0], expected, rtol=1e-6)


def test_key_based_scores_hand_computed_with_scaling():
    layer = fusion.KeyBasedScores(key_dim=2)
    f_t = tf.constant([[1.0, 2.0]])
    f_i = tf.constant([[3.0, -1.0]])
    layer(f_t, f_i)
    eye, zero = np.eye(2), np.zeros(2)
    for dense in (layer.text_key, layer.text_query, layer.image_key, layer.image_query):
        _set_dense(dense, eye, zero)
    # k = q = f for both streams: k_t·q_i = 1*3 + 2*-1 = 1, k_i·q_t = 1; equal scores.
    np.testing.assert_allclose(layer(f_t, f_i).numpy()[0], [0.5, 0.5], rtol=1e-6)
    _set_dense(layer.text_key, 2 * eye, zero)  # k_t·q_i = 2, k_i·q_t = 1, both / sqrt(2)
    logits = np.array([2.0, 1.0]) / np.sqrt(2.0)
    np.testing.assert_allclose(layer(f_t, f_i).numpy()[0], np.exp(logits) / np.exp(logits).sum(), rtol=1e-6)


def test_hybrid_scores_apply_one_network_d_to_each_stream():
    layer = fusion.HybridScores(hidden_units=2, normalize="softmax")
    keyless = tf.constant([[0.7, 0.3]])
    key_based = tf.constant([[0.2, 0.8]])
    layer(keyless, key_based)
    _set_dense(layer.hidden, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    _set_dense(layer.out, [[1.0], [3.0]], [0.0])
    # D(x) = relu(x) · [1, 3]: text (0.7, 0.2) → 1.3, image (0.3, 0.8) → 2.7.
    expected = np.exp([1.3, 2.7]) / np.exp([1.3, 2.7]).sum()
    np.testing.assert_allclose(layer(keyless, key_based).numpy()[0], expected, rtol=1e-5)


def test_weighted_concat_scales_each_stream_by_its_score():
    v_t = tf.constant([[1.0, 2.0]])
    v_i = tf.constant([[3.0, 4.0]])
    out = fusion.weighted_concat(v_t, v_i, tf.constant([[0.25, 0.75]])).numpy()
    np.testing.assert_allclose(out, [[0.25, 0.5, 2.25, 3.0]])


def test_key_based_scores_without_scaling_use_the_raw_dot_products():
    layer = fusion.KeyBasedScores(key_dim=2, scaled=False)
    f_t, f_i = tf.constant([[1.0, 2.0]]), tf.constant([[3.0, -1.0]])
    layer(f_t, f_i)
    eye, zero = np.eye(2), np.zeros(2)
    for dense in (layer.text_key, layer.text_query, layer.image_key, layer.image_query):
        _set_dense(dense, eye, zero)
    _set_dense(layer.text_key, 2 * eye, zero)  # k_t·q_i = 2, k_i·q_t = 1, unscaled
    np.testing.assert_allclose(layer(f_t, f_i).numpy()[0], np.exp([2.0, 1.0]) / np.exp([2.0, 1.0]).sum(), rtol=1e-6)


def test_unshared_keyless_scorers_score_each_stream_with_its_own_weights():
    layer = fusion.KeylessScores(shared_scorer=False)
    v = tf.constant([[1.0, 1.0]])
    layer(v, v)
    assert layer.text_scorer is not layer.image_scorer
    _set_dense(layer.text_scorer, [[1.0], [1.0]], [0.0])  # rs_t = 2
    _set_dense(layer.image_scorer, [[0.0], [0.0]], [0.0])  # rs_i = 0 on the same values
    np.testing.assert_allclose(layer(v, v).numpy()[0], np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum(), rtol=1e-6)


def test_weighted_sum_adds_the_scaled_streams():
    out = fusion.weighted_sum(tf.constant([[1.0, 2.0]]), tf.constant([[3.0, 4.0]]), tf.constant([[0.25, 0.75]]))
    np.testing.assert_allclose(out.numpy(), [[2.5, 3.5]])


def _unimodal_identity_heads(head, f_t, f_i, num_classes):
    """Builds `head` and makes both unimodal classifiers the identity: p_t = softmax(f_t), p_i = softmax(f_i)."""
    head(f_t, f_i)
    eye, zero = np.eye(num_classes), np.zeros(num_classes)
    _set_dense(head.text_head.classifier, eye, zero)
    _set_dense(head.image_head.classifier, eye, zero)


def _softmax(x):
    e = np.exp(np.asarray(x, np.float64))
    return e / e.sum(-1, keepdims=True)


def test_decision_level_is_an_fc_network_on_both_models_probabilities_hand_computed():
    head = fusion.DecisionLevelFusion(2, fusion.HeadConfig(width=4, dropout=0.0))
    f_t, f_i = tf.constant([[1.0, 0.0]]), tf.constant([[0.0, 2.0]])
    _unimodal_identity_heads(head, f_t, f_i, 2)
    _set_dense(head.hidden, np.eye(4), np.zeros(4))  # relu(identity): [p_t, p_i]
    _set_dense(head.classifier, [[1, 0], [0, 1], [1, 0], [0, 1]], [0.0, 0.0])  # p_t + p_i
    expected = _softmax([1.0, 0.0]) + _softmax([0.0, 2.0])
    np.testing.assert_allclose(head(f_t, f_i).numpy()[0], expected, rtol=1e-5)
    # Only the decision network trains: the unimodal models are fixed.
    assert {w.name.split("/")[-2] for w in head.trainable_weights} == {"decision_hidden", "classifier"}
    assert len(head.non_trainable_weights) == 4


def test_policy_serves_the_chosen_models_probabilities_and_trains_on_their_mixture_hand_computed():
    head = fusion.PolicyFusion(3, fusion.HeadConfig(width=4, policy_top_k=2, dropout=0.0))
    # Product 0: text is confident; product 1: image is.
    f_t = tf.constant([[3.0, 0.0, 0.0], [0.2, 0.1, 0.0]])
    f_i = tf.constant([[0.0, 0.5, 0.0], [0.0, 0.0, 4.0]])
    _unimodal_identity_heads(head, f_t, f_i, 3)
    _set_dense(head.hidden, np.eye(4), np.zeros(4))  # relu of [top2(p_t), top2(p_i)]
    _set_dense(head.choice, [[5, 0], [0, 0], [0, 5], [0, 0]], [0.0, 0.0])  # π ∝ exp(5·max p)
    p_t, p_i = _softmax(f_t.numpy()), _softmax(f_i.numpy())
    pi = _softmax(5 * np.stack([p_t.max(-1), p_i.max(-1)], -1))
    np.testing.assert_allclose(head.policy(tf.constant(p_t, tf.float32), tf.constant(p_i, tf.float32)).numpy(), pi,
                               rtol=1e-5)
    served = tf.nn.softmax(head(f_t, f_i, training=False)).numpy()
    np.testing.assert_allclose(served, np.stack([p_t[0], p_i[1]]), rtol=1e-5)
    trained = np.exp(head(f_t, f_i, training=True).numpy())
    np.testing.assert_allclose(trained, pi[:, :1] * p_t + pi[:, 1:] * p_i, rtol=1e-5)


def test_an_undecided_policy_serves_the_text_models_prediction():
    """p_argmax π: at a tie (π_t = π_i) argmax takes the first, the text model."""
    head = fusion.PolicyFusion(3, fusion.HeadConfig(width=4, policy_top_k=2, dropout=0.0))
    head(tf.zeros([1, 3]), tf.zeros([1, 3]))
    _set_dense(head.choice, np.zeros((4, 2)), [0.0, 0.0])  # π = (1/2, 1/2) for every product
    p_t, p_i = tf.constant([[0.6, 0.3, 0.1]]), tf.constant([[0.1, 0.2, 0.7]])
    np.testing.assert_allclose(head.fuse(p_t, p_i, training=False).numpy(), np.log(p_t.numpy()), rtol=1e-6)


@pytest.mark.parametrize("training", [False, True])
def test_policy_logits_are_exact_log_probabilities_down_to_tiny_ones_and_finite_at_zero(training):
    """The policy's logits are log-probabilities: a class both models give 1e-10 still ranks below one they
    give 1e-9 (the top-k a user sees) at its true log-probability; one they give exactly 0 (float32
    softmax underflows) gets a finite logit, lower still, so the loss stays finite."""
    head = fusion.PolicyFusion(4, fusion.HeadConfig(width=4, policy_top_k=2, dropout=0.0))
    head(tf.zeros([1, 4]), tf.zeros([1, 4]))
    # Both models agree, so the chosen probabilities and the mixture are p whatever the policy.
    p = tf.constant([[1.0, 1e-9, 1e-10, 0.0]])
    logits = head.fuse(p, p, training=training).numpy()[0]
    np.testing.assert_allclose(logits[:3], np.log([1.0, 1e-9, 1e-10]), rtol=1e-5, atol=1e-6)
    assert np.isfinite(logits[3]) and logits[3] < logits[2] - 5


@pytest.mark.parametrize("name", fusion.PAPER_FUSIONS)
def test_every_fusion_of_the_paper_gives_float32_logits_under_mixed_precision(name):
    import tf_keras as keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        head = fusion.fusion_head(name, 5, fusion.HeadConfig(width=8, key_dim=4))
        logits = head(tf.random.normal([3, 12]), tf.random.normal([3, 20]))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert logits.dtype == tf.float32 and logits.shape == (3, 5)
    assert np.all(np.isfinite(logits.numpy()))


def test_stream_norm_makes_the_heads_blind_to_a_stream_s_scale():
    """With stream_norm, an image encoder whose features are 100x larger changes nothing; without it,
    the larger stream dominates (the keyless collapse measured in docs/results.md)."""
    f_t, f_i = tf.random.normal([4, 24]), tf.random.normal([4, 40])
    for name in (fusion.CONCAT, fusion.KEYLESS, fusion.HANET):
        normed = fusion.fusion_head(name, 5, fusion.HeadConfig(width=16, key_dim=8, stream_norm=True))
        # Equal up to LayerNormalization's epsilon (1e-3 against a variance of 1 vs 1e4).
        np.testing.assert_allclose(normed(f_t, f_i), normed(f_t, 100.0 * f_i), atol=5e-3)
        plain = fusion.fusion_head(name, 5, fusion.HeadConfig(width=16, key_dim=8))
        assert not np.allclose(plain(f_t, f_i), plain(f_t, 100.0 * f_i), atol=5e-2)
    # Unimodal heads have nothing to balance: the option leaves them as they are.
    assert not fusion.fusion_head(fusion.TEXT_ONLY, 5, fusion.HeadConfig(stream_norm=True)).stream_norm


def test_stream_dropout_zeroes_one_stream_never_both_of_its_share_of_examples():
    f_t, f_i = tf.ones([20000, 3]), tf.ones([20000, 5])
    tf.random.set_seed(0)
    t, i = (x.numpy() for x in fusion.drop_one_stream(f_t, f_i, 0.4))
    text_gone, image_gone = (t == 0).all(axis=1), (i == 0).all(axis=1)
    # A stream is dropped whole or not at all, and never both of one example.
    assert set(np.unique(t)) <= {0.0, 1.0} and ((t == 0).any(axis=1) == text_gone).all()
    assert not (text_gone & image_gone).any()
    # 40 % of examples lose a stream, half of them each (binomial std of 20,000 draws: 0.35 points).
    assert abs((text_gone | image_gone).mean() - 0.4) < 0.015
    assert abs(text_gone.mean() - 0.2) < 0.015 and abs(image_gone.mean() - 0.2) < 0.015


def test_stream_dropout_acts_in_training_only_and_not_on_unimodal_heads():
    f_t, f_i = tf.random.normal([64, 24]), tf.random.normal([64, 40])
    config = fusion.HeadConfig(width=16, key_dim=8, stream_dropout=0.9, dropout=0.0)
    for name in (fusion.CONCAT, fusion.HANET):
        head = fusion.fusion_head(name, 5, config)
        np.testing.assert_allclose(head(f_t, f_i, training=False), head(f_t, f_i))
        assert not np.allclose(head(f_t, f_i, training=True), head(f_t, f_i), atol=1e-4)
    text = fusion.fusion_head(fusion.TEXT_ONLY, 5, config)
    np.testing.assert_allclose(text(f_t, f_i, training=True), text(f_t, f_i))
    with pytest.raises(ValueError, match="stream_dropout"):
        fusion.HeadConfig(stream_dropout=1.0)


# ---- Whole heads against a NumPy re-implementation of HANET.md, eq. 1-7 ------------------------------

def _dense(layer, x):
    kernel, bias = (np.asarray(w, np.float64) for w in layer.get_weights())
    return x @ kernel + bias


def _relu(x):
    return np.maximum(x, 0.0)


def _layer_norm(layer, x, epsilon=1e-3):
    gamma, beta = (np.asarray(w, np.float64) for w in layer.get_weights())
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + epsilon) * gamma + beta


def _keyless_scores(layer, v_t, v_i):
    """Eq. 1-2: rs = linear(v) per stream, [s_t,l, s_i,l] = softmax([rs_t, rs_i])."""
    return _softmax(np.concatenate([_dense(layer.text_scorer, v_t), _dense(layer.image_scorer, v_i)], -1))


def _key_based_scores(layer, f_t, f_i, key_dim, scaled):
    """Eq. 4: [s_t,b, s_i,b] = softmax([k_t · q_i, k_i · q_t]), scaled by 1/sqrt(d_k) when `scaled`."""
    k_t, q_t = _dense(layer.text_key, f_t), _dense(layer.text_query, f_t)
    k_i, q_i = _dense(layer.image_key, f_i), _dense(layer.image_query, f_i)
    raw = np.stack([(k_t * q_i).sum(-1), (k_i * q_t).sum(-1)], -1)
    return _softmax(raw / np.sqrt(key_dim) if scaled else raw)


def _hybrid_scores(layer, s_l, s_b, normalize):
    """Eq. 6: s = D([s_l, s_b]) per stream, D one hidden ReLU layer shared by the streams."""
    d = [_dense(layer.out, _relu(_dense(layer.hidden, np.stack([s_l[:, s], s_b[:, s]], -1))))[:, 0] for s in (0, 1)]
    raw = np.stack(d, -1)
    return {"softmax": _softmax, "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "none": lambda x: x}[normalize](raw)


def _reference_scores(head, config, f_t, f_i):
    """v_t, v_i and (s_t, s_i) of an attention head, by HANET.md."""
    v_t, v_i = _dense(head.values.text_value, f_t), _dense(head.values.image_value, f_i)  # values, width d
    if head.fusion == fusion.KEYLESS:
        return v_t, v_i, _keyless_scores(head.keyless, v_t, v_i)
    if head.fusion == fusion.KEY_BASED:
        return v_t, v_i, _key_based_scores(head.key_based, f_t, f_i, config.key_dim, config.scaled)
    s_l = _keyless_scores(head.keyless, v_t, v_i)
    s_b = _key_based_scores(head.key_based, f_t, f_i, config.key_dim, config.scaled)
    return v_t, v_i, _hybrid_scores(head.hybrid, s_l, s_b, config.hybrid_normalize)


def _reference_feature_logits(head, config, f_t, f_i):
    """Logits of a feature-level head; and its stream weights (s_t, s_i) for the attention heads."""
    if config.stream_norm and head.fusion not in fusion.UNIMODAL_FUSIONS:
        f_t, f_i = _layer_norm(head.text_norm, f_t), _layer_norm(head.image_norm, f_i)
    scores = None
    if head.fusion == fusion.TEXT_ONLY:
        fused = f_t
    elif head.fusion == fusion.IMAGE_ONLY:
        fused = f_i
    elif head.fusion == fusion.CONCAT:
        fused = _relu(_dense(head.hidden, np.concatenate([f_t, f_i], -1)))
    else:
        v_t, v_i, scores = _reference_scores(head, config, f_t, f_i)
        wf_t, wf_i = scores[:, :1] * v_t, scores[:, 1:] * v_i  # eq. 3 / 5 / 7
        fused = np.concatenate([wf_t, wf_i], -1) if config.combine == "concat" else wf_t + wf_i
    return _dense(head.classifier, fused), scores


def _reference_decision_logits(head, config, f_t, f_i, training):
    """Logits of a decision-level head (Table 3) from the frozen unimodal classifiers' probabilities."""
    p_t, p_i = _softmax(_dense(head.text_head.classifier, f_t)), _softmax(_dense(head.image_head.classifier, f_i))
    if head.fusion == fusion.DECISION_LEVEL:
        return _dense(head.classifier, _relu(_dense(head.hidden, np.concatenate([p_t, p_i], -1)))), None
    k = min(config.policy_top_k, head.num_classes)
    top = np.concatenate([-np.sort(-p_t, -1)[:, :k], -np.sort(-p_i, -1)[:, :k]], -1)
    pi = _softmax(_dense(head.choice, _relu(_dense(head.hidden, top))))
    chosen = pi[:, :1] * p_t + pi[:, 1:] * p_i if training else np.where(pi[:, :1] >= pi[:, 1:], p_t, p_i)
    return np.log(chosen), pi


def _random_weights(head, seed=0):
    """Every weight, biases and norms included, drawn at random: a term dropped anywhere shows."""
    rng = np.random.default_rng(seed)
    head.set_weights([rng.normal(0.0, 0.7, size=w.shape).astype(np.float32) for w in head.weights])


def _stream_features(seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=(6, 7)).astype(np.float32)


HANET_CHOICES = [
    {},
    {"shared_scorer": False},
    {"scaled": False},
    {"hybrid_normalize": "sigmoid"},
    {"hybrid_normalize": "none"},
    {"combine": "sum"},
    {"stream_norm": True},
    {"shared_scorer": False, "scaled": False, "hybrid_normalize": "none", "combine": "sum", "stream_norm": True},
]
FEATURE_CASES = [(fusion.HANET, options) for options in HANET_CHOICES] + [
    (fusion.TEXT_ONLY, {}), (fusion.IMAGE_ONLY, {}), (fusion.CONCAT, {}), (fusion.CONCAT, {"stream_norm": True}),
    (fusion.KEYLESS, {}), (fusion.KEYLESS, {"shared_scorer": False, "combine": "sum"}),
    (fusion.KEY_BASED, {}), (fusion.KEY_BASED, {"scaled": False, "stream_norm": True}),
]


@pytest.mark.parametrize("name,options", FEATURE_CASES, ids=lambda x: str(x))
def test_every_feature_level_head_computes_the_papers_equations_from_its_own_weights(name, options):
    config = fusion.HeadConfig(width=4, key_dim=3, hybrid_hidden_units=3, **options)
    head = fusion.fusion_head(name, 4, config)
    f_t, f_i = _stream_features()
    head(f_t, f_i)
    _random_weights(head)
    expected, scores = _reference_feature_logits(head, config, f_t.astype(np.float64), f_i.astype(np.float64))
    np.testing.assert_allclose(head(f_t, f_i, training=False).numpy(), expected, rtol=1e-4, atol=1e-5)
    if scores is None:
        assert not head.weighs_streams
    else:  # the weights the head explains its predictions with are the ones it applied
        assert head.weighs_streams
        np.testing.assert_allclose(head.stream_weights(f_t, f_i).numpy(), scores, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", fusion.PAPER_DECISION_FUSIONS)
@pytest.mark.parametrize("training", [False, True])
def test_every_decision_level_head_computes_table_3s_models_from_its_own_weights(name, training):
    config = fusion.HeadConfig(width=4, policy_top_k=2, dropout=0.0)
    head = fusion.fusion_head(name, 3, config)
    f_t, f_i = _stream_features()
    head(f_t[:, :3], f_i[:, :3])
    _random_weights(head)
    f_t, f_i = 3 * f_t[:, :3], 3 * f_i[:, :3]  # confident enough that the policy's choice varies
    expected, pi = _reference_decision_logits(head, config, f_t.astype(np.float64), f_i.astype(np.float64), training)
    np.testing.assert_allclose(head(f_t, f_i, training=training).numpy(), expected, rtol=1e-4, atol=1e-5)
    assert head.weighs_streams == (pi is not None)
    if pi is not None:
        np.testing.assert_allclose(head.stream_weights(f_t, f_i).numpy(), pi, rtol=1e-4, atol=1e-6)


def test_the_hanet_head_weighs_the_streams_by_both_attentions_not_keyless_alone():
    """HANet's weights move with the key-based scores: a head that used only keyless attention would not."""
    config = fusion.HeadConfig(width=4, key_dim=3, hybrid_hidden_units=3)
    head = fusion.fusion_head(fusion.HANET, 4, config)
    f_t, f_i = _stream_features()
    head(f_t, f_i)
    _random_weights(head)
    before = head.stream_weights(f_t, f_i).numpy()
    for dense in (head.key_based.text_key, head.key_based.image_query):  # changes s_b only
        dense.set_weights([3 * w for w in dense.get_weights()])
    assert np.abs(head.stream_weights(f_t, f_i).numpy() - before).max() > 1e-3


# ---- Registry, configs, saved models -----------------------------------------------------------------

def test_every_fusion_of_the_paper_has_its_own_registered_class():
    assert set(fusion.FUSION_HEADS) == set(fusion.FUSIONS)
    assert len(set(fusion.FUSION_HEADS.values())) == len(fusion.FUSIONS)
    for name, cls in fusion.FUSION_HEADS.items():
        assert cls.fusion == name
        assert issubclass(cls, fusion.FeatureHead) == (name in fusion.FEATURE_FUSIONS)
        assert issubclass(cls, fusion.DecisionFusion) == (name in fusion.DECISION_FUSIONS)
        assert keras.utils.get_registered_name(cls) == f"hanet>{cls.__name__}"
        assert type(fusion.fusion_head(name, 3, name="head")) is cls


def _whole(message):
    """pytest.raises' match for exactly `message` (match searches: a part would pass inside a longer text)."""
    return f"^{re.escape(message)}$"


def test_a_fusion_registered_twice_or_unknown_is_rejected_by_name():
    with pytest.raises(ValueError, match=_whole("fusion 'hanet' is already registered to HanetHead")):
        fusion.register(fusion.HANET)(type("Other", (fusion.FeatureHead,), {}))
    assert fusion.FUSION_HEADS[fusion.HANET] is fusion.HanetHead
    # What a user who mistyped --fusion reads: the name and every fusion there is.
    with pytest.raises(ValueError, match=_whole(f"unknown fusion 'late'; expected one of {fusion.FUSIONS}")):
        fusion.fusion_head("late", 3)


def _built(name, config=fusion.HeadConfig(width=4, key_dim=3, hybrid_hidden_units=3, stream_norm=True)):
    head = fusion.fusion_head(name, 3, config, name="fusion")
    f_t, f_i = _stream_features()
    head(f_t, f_i)
    _random_weights(head)
    return head, f_t, f_i


@pytest.mark.parametrize("name", fusion.PAPER_FUSIONS)
def test_every_fusion_layer_round_trips_through_its_config(name):
    options = {"width": 4, "key_dim": 3, "hybrid_hidden_units": 5, "hybrid_normalize": "sigmoid",
               "shared_scorer": False, "scaled": False, "combine": "sum", "dropout": 0.2, "stream_norm": True,
               "stream_dropout": 0.3, "policy_top_k": 2}
    head, f_t, f_i = _built(name, fusion.HeadConfig(**options))
    restored = keras.layers.deserialize(keras.layers.serialize(head))
    assert type(restored) is type(head) and restored.name == "fusion"
    assert restored.get_config() == head.get_config()
    assert restored.config == fusion.HeadConfig(**options) and restored.num_classes == 3
    restored(f_t, f_i)
    restored.set_weights(head.get_weights())
    np.testing.assert_allclose(restored(f_t, f_i).numpy(), head(f_t, f_i).numpy(), rtol=1e-6)


def test_each_equation_layer_round_trips_through_its_config():
    layers = [fusion.StreamValues(7), fusion.KeylessScores(shared_scorer=False), fusion.KeyBasedScores(5, scaled=False),
              fusion.HybridScores(6, "none")]
    for layer in layers:
        restored = keras.layers.deserialize(keras.layers.serialize(layer))
        assert type(restored) is type(layer) and restored.get_config() == layer.get_config()
    with pytest.raises(ValueError, match=_whole("normalize must be one of ('softmax', 'sigmoid', 'none'), got 'tanh'")):
        fusion.HybridScores(2, "tanh")


@pytest.mark.parametrize("name", fusion.PAPER_DECISION_FUSIONS)
def test_a_decision_network_round_trips_with_its_head(name):
    head, _, _ = _built(name)
    network = fusion.DecisionNetwork(head, name="fusion")
    restored = keras.layers.deserialize(keras.layers.serialize(network))
    assert type(restored.head) is type(head) and restored.head.get_config() == head.get_config()
    p = _softmax(_stream_features()[0][:, :3]).astype(np.float32)
    restored.head(*_stream_features())
    restored.head.set_weights(head.get_weights())
    np.testing.assert_allclose(restored(p, p[::-1]).numpy(), network(p, p[::-1]).numpy(), rtol=1e-6)


def _head_model(module, name):
    """A head on cached features, as trainer.model.head_model builds it, from `module`'s classes."""
    f_t, f_i = keras.Input([5], name="text_features"), keras.Input([7], name="image_features")
    head = module.fusion_head(name, 3, module.HeadConfig(width=4, key_dim=3, hybrid_hidden_units=3, stream_norm=True))
    return keras.Model({"text_features": f_t, "image_features": f_i}, head(f_t, f_i))


@pytest.mark.parametrize("name", fusion.PAPER_FUSIONS)
def test_a_model_saved_before_one_class_per_fusion_loads_with_equal_outputs(name, tmp_path):
    """Weights and Keras SavedModels written by the old FeatureHead switch (frozen in tests/fixtures) load
    into the registered classes: a training stage resumes from them and a saved model reloads."""
    from tests.fixtures import fusion_before_registry as before

    old = _head_model(before, name)
    _random_weights(old)
    f_t, f_i = _stream_features()
    inputs = {"text_features": f_t, "image_features": f_i}
    expected = old(inputs, training=False).numpy()
    old.save_weights(str(tmp_path / "weights"))
    old.save(str(tmp_path / "model"), save_format="tf", include_optimizer=False, save_traces=False)

    new = _head_model(fusion, name)
    # The same weights, by name and in order: HDF5 weight files and get/set_weights line up too.
    assert [w.name for w in new.weights] == [w.name for w in old.weights]
    assert [w.name for w in new.trainable_weights] == [w.name for w in old.trainable_weights]
    new.load_weights(str(tmp_path / "weights")).assert_consumed()
    np.testing.assert_allclose(new(inputs, training=False).numpy(), expected, rtol=1e-6)
    loaded = keras.models.load_model(str(tmp_path / "model"))
    assert type(loaded.get_layer("fusion")) is fusion.FUSION_HEADS[name]
    np.testing.assert_allclose(loaded(inputs, training=False).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("name", fusion.PAPER_FUSIONS)
def test_a_checkpoint_written_before_one_class_per_fusion_restores_every_weight_by_name(name, tmp_path):
    """The quick half of the test above (which saves SavedModels, slow): the heads name and order their
    weights as the old FeatureHead switch did (HDF5 weight files and get/set_weights line up on them) and
    its TF checkpoint restores into them whole: training resumes from such checkpoints."""
    from tests.fixtures import fusion_before_registry as before

    old, new = _head_model(before, name), _head_model(fusion, name)
    assert [w.name for w in new.weights] == [w.name for w in old.weights]
    _random_weights(old)
    path = tf.train.Checkpoint(model=old).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(model=new).read(path).assert_consumed()
    for mine, theirs in zip(new.weights, old.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


@pytest.mark.parametrize("name", fusion.PAPER_FUSIONS)
def test_a_saved_model_reloads_its_fusion_layer_and_outputs(name, tmp_path):
    model = _head_model(fusion, name)
    _random_weights(model)
    f_t, f_i = _stream_features()
    inputs = {"text_features": f_t, "image_features": f_i}
    model.save(str(tmp_path / "model.keras"))
    loaded = keras.models.load_model(str(tmp_path / "model.keras"))
    assert type(loaded.get_layer("fusion")) is fusion.FUSION_HEADS[name]
    assert loaded.get_layer("fusion").get_config() == model.get_layer("fusion").get_config()
    np.testing.assert_allclose(loaded(inputs, training=False).numpy(), model(inputs, training=False).numpy(), rtol=1e-6)


def test_the_default_head_is_the_one_docs_training_md_argues_for():
    """The open choices' defaults as the docs state them (the table of docs/training.md)."""
    import pathlib

    rows = {}
    for line in (pathlib.Path(__file__).parents[1] / "docs" / "training.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        for option in ("shared_scorer", "scaled", "hybrid_normalize", "combine", "stream_dropout"):
            if len(cells) == 3 and f"`{option}`" in cells[0]:
                rows[option] = cells[1]
    assert rows == {"shared_scorer": "shared", "scaled": "scaled", "hybrid_normalize": "softmax", "combine": "concat",
                    "stream_dropout": "off"}
    defaults = fusion.HeadConfig()
    assert (defaults.shared_scorer, defaults.scaled, defaults.hybrid_normalize, defaults.combine,
            defaults.stream_dropout) == (True, True, "softmax", "concat", 0.0)
    from common import features

    assert defaults.policy_top_k == features.DEFAULT_TOP_K  # "policy on the top-5": the serving top-k


POSITIVE = "width, key_dim, hybrid_hidden_units and policy_top_k must be positive"


@pytest.mark.parametrize("options, message", [
    ({"hybrid_normalize": "tanh"}, "hybrid_normalize must be one of ('softmax', 'sigmoid', 'none'), got 'tanh'"),
    ({"combine": "max"}, "combine must be one of ('concat', 'sum'), got 'max'"),
    ({"width": 0}, POSITIVE), ({"key_dim": 0}, POSITIVE), ({"hybrid_hidden_units": 0}, POSITIVE),
    ({"policy_top_k": 0}, POSITIVE),
    ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"), ({"dropout": -0.1}, "dropout must be in [0, 1), got -0.1"),
    ({"stream_dropout": -0.1}, "stream_dropout must be in [0, 1), got -0.1"),
])
def test_a_head_config_out_of_range_is_refused_naming_the_option(options, message):
    """The options come from the command line: the whole message is what its user reads."""
    with pytest.raises(ValueError, match=_whole(message)):
        fusion.HeadConfig(**options)


def test_a_head_config_cannot_be_changed_under_the_heads_that_share_it():
    """Heads built without a config share the one default HeadConfig: a change made through one head
    would reach every other. A config is a value: frozen, equal and hashable by its options."""
    concat, hanet = fusion.fusion_head(fusion.CONCAT, 3), fusion.fusion_head(fusion.HANET, 3)
    assert concat.config is hanet.config
    with pytest.raises(dataclasses.FrozenInstanceError):
        concat.config.width = 8
    assert hanet.config.width == fusion.HeadConfig().width == 512
    assert len({fusion.HeadConfig(width=8), fusion.HeadConfig(width=8), fusion.HeadConfig()}) == 2


def test_the_smallest_valid_head_config_builds():
    config = fusion.HeadConfig(width=1, key_dim=1, hybrid_hidden_units=1, policy_top_k=1, dropout=0.0)
    assert fusion.HeadConfig(**config.as_dict()) == config
    assert fusion.fusion_head(fusion.HANET, 2, config)(*_stream_features()).shape == (6, 2)


@pytest.mark.parametrize("shared", [True, False])
def test_keyless_scores_restored_from_config_share_their_scorer_as_the_original_does(shared):
    layer = fusion.KeylessScores(shared_scorer=shared)
    v_t, v_i = (tf.constant(np.random.default_rng(0).normal(size=(2, 4)), tf.float32) for _ in range(2))
    layer(v_t, v_i)
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    restored(v_t, v_i)
    assert len(restored.weights) == len(layer.weights) == (2 if shared else 4)


def test_each_expert_layer_round_trips_through_its_config():
    """hanet_experts' M-stream layers (eq. 1–7 over M experts): a saved head must rebuild them."""
    layers = [fusion.MultiKeylessScores(3, 5), fusion.MultiKeyBasedScores(3, 4), fusion.MultiHybridScores(3, 7),
              fusion.ExpertProduct(3)]
    for layer in layers:
        restored = keras.layers.deserialize(keras.layers.serialize(layer))
        assert type(restored) is type(layer) and restored.get_config() == layer.get_config()


def test_every_layer_a_paper_head_holds_is_registered_with_keras_by_its_name():
    """A saved model finds each layer by "hanet>ClassName": one left unregistered loads only with
    custom_objects. FeatureHead too, the class models saved before the heads were split hold, and
    DecisionNetwork, a decision head's network saved as a layer alone."""
    import tf_keras as keras

    classes = {fusion.FeatureHead, fusion.DecisionNetwork}
    for name in fusion.PAPER_FUSIONS:
        head = fusion.fusion_head(name, 5, fusion.HeadConfig(width=8, key_dim=4))
        head(tf.random.normal([2, 12]), tf.random.normal([2, 20]))
        classes |= {type(layer) for layer in (head, *head.submodules) if type(layer).__module__ == fusion.__name__}
    assert fusion.HybridScores in classes  # the walk reaches nested layers
    for cls in classes:
        assert keras.utils.get_registered_object(f"{fusion.PACKAGE}>{cls.__name__}") is cls, cls.__name__
