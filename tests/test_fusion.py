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
    head = fusion.FusionHead(name, num_classes=7, width=16, key_dim=8)
    logits = head(f_t, f_i)
    assert logits.shape == (4, 7)
    assert np.all(np.isfinite(logits.numpy()))


@pytest.mark.parametrize("name", [fusion.KEYLESS, fusion.KEY_BASED, fusion.HANET])
def test_attention_scores_are_distributions_over_the_two_streams(name):
    head = fusion.FusionHead(name, num_classes=3, width=16, key_dim=8)
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
        fusion.FusionHead("late", num_classes=3)
