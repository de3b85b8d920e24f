"""The attention layers against HANET.md: shapes, probability-like scores, hand-computed cases."""
import numpy as np
import pytest
import tensorflow as tf

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


@pytest.mark.parametrize("name", fusion.FEATURE_FUSIONS)
def test_every_head_maps_features_to_logits(name):
    f_t = tf.random.normal([4, 24])
    f_i = tf.random.normal([4, 40])
    head = fusion.FeatureHead(name, 7, fusion.HeadConfig(width=16, key_dim=8))
    logits = head(f_t, f_i)
    assert logits.shape == (4, 7)
    assert np.all(np.isfinite(logits.numpy()))


@pytest.mark.parametrize("name", [fusion.KEYLESS, fusion.KEY_BASED, fusion.HANET])
def test_attention_scores_are_distributions_over_the_two_streams(name):
    head = fusion.FeatureHead(name, 3, fusion.HeadConfig(width=16, key_dim=8))
    f_t, f_i = tf.random.normal([5, 24]), tf.random.normal([5, 40])
    head(f_t, f_i)
    _, _, scores = head.attention_scores(f_t, f_i)
    scores = scores.numpy()
    assert scores.shape == (5, 2)
    assert np.all(scores > 0)
    np.testing.assert_allclose(scores.sum(axis=-1), 1.0, rtol=1e-6)


def test_weighted_concat_scales_each_stream_by_its_score():
    v_t = tf.constant([[1.0, 2.0]])
    v_i = tf.constant([[3.0, 4.0]])
    out = fusion.weighted_concat(v_t, v_i, tf.constant([[0.25, 0.75]])).numpy()
    np.testing.assert_allclose(out, [[0.25, 0.5, 2.25, 3.0]])


def test_unknown_fusion_is_rejected_by_name():
    with pytest.raises(ValueError, match="unknown fusion 'late'"):
        fusion.FeatureHead("late", 3)


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


@pytest.mark.parametrize("options", [
    {"combine": "sum"}, {"shared_scorer": False}, {"scaled": False},
    {"hybrid_normalize": "sigmoid"}, {"hybrid_normalize": "none"},
])
def test_every_open_choice_builds_a_working_hanet_head(options):
    head = fusion.fusion_head(fusion.HANET, 7, fusion.HeadConfig(width=16, key_dim=8, **options))
    logits = head(tf.random.normal([4, 24]), tf.random.normal([4, 40]))
    assert logits.shape == (4, 7) and np.all(np.isfinite(logits.numpy()))


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


@pytest.mark.parametrize("name", fusion.FUSIONS)
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
        normed = fusion.FeatureHead(name, 5, fusion.HeadConfig(width=16, key_dim=8, stream_norm=True))
        # Equal up to LayerNormalization's epsilon (1e-3 against a variance of 1 vs 1e4).
        np.testing.assert_allclose(normed(f_t, f_i), normed(f_t, 100.0 * f_i), atol=5e-3)
        plain = fusion.FeatureHead(name, 5, fusion.HeadConfig(width=16, key_dim=8))
        assert not np.allclose(plain(f_t, f_i), plain(f_t, 100.0 * f_i), atol=5e-2)
    # Unimodal heads have nothing to balance: the option leaves them as they are.
    assert not fusion.FeatureHead(fusion.TEXT_ONLY, 5, fusion.HeadConfig(stream_norm=True)).stream_norm


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
        head = fusion.FeatureHead(name, 5, config)
        np.testing.assert_allclose(head(f_t, f_i, training=False), head(f_t, f_i))
        assert not np.allclose(head(f_t, f_i, training=True), head(f_t, f_i), atol=1e-4)
    text = fusion.FeatureHead(fusion.TEXT_ONLY, 5, config)
    np.testing.assert_allclose(text(f_t, f_i, training=True), text(f_t, f_i))
    with pytest.raises(ValueError, match="stream_dropout"):
        fusion.HeadConfig(stream_dropout=1.0)
