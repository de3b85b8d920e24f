"""Attention that attends: the routing figures (common/metrics.py: roc_auc, RoutingCounts), where the
evaluate stage reports them (its scalars and the report's "Which stream decided"), and whether the
attention heads, trained on streams where per example only one carries the class, give their
weight to that stream (keyless, key_based and hanet on features; hanet_experts on experts' scores)."""
import dataclasses
import itertools

import numpy as np
import pytest
import tf_keras as keras

from common.metrics import RoutingCounts, roc_auc
from components.evaluate import Verdict
from components.evaluation_report import render_html
from tests.test_evaluation_report import _evaluation, _Page
from common.features import HANET, HANET_EXPERTS, KEY_BASED, KEYLESS
from trainer.fusion import DecisionNetwork, HeadConfig, fusion_head

CLASSES, DIM = 4, 16


def _pairwise_auc(positive, negative) -> float:
    return float(np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positive, negative)]))


def test_roc_auc_is_the_share_of_pairs_ranked_right_ties_counting_half():
    rng = np.random.default_rng(0)
    positive, negative = rng.integers(0, 6, 40) / 5, rng.integers(0, 5, 30) / 5  # many ties
    assert np.isclose(roc_auc(positive, negative), _pairwise_auc(positive, negative))
    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0 and roc_auc([0.1], [0.9]) == 0.0
    assert roc_auc([0.5] * 3, [0.5] * 4) == 0.5  # a constant weight separates nothing
    assert roc_auc([], [0.3]) is None


def test_routing_counts_stream_over_batches_and_split_the_disagreement_products():
    rng = np.random.default_rng(1)
    s_t = rng.random(500)
    text_right, image_right = rng.random(500) < 0.7, rng.random(500) < 0.5
    counts = RoutingCounts()
    for start in range(0, 500, 64):
        batch = slice(start, start + 64)
        counts.add(s_t[batch], text_right[batch], image_right[batch])
    figures = counts.figures()
    text_decides, image_decides = s_t[text_right & ~image_right], s_t[~text_right & image_right]
    assert figures["products"] == 500
    assert np.isclose(figures["text_weight_std"], s_t.std()) and np.isclose(figures["text_weight_mean"], s_t.mean())
    assert figures["text_decides_products"] == len(text_decides)
    assert figures["image_decides_products"] == len(image_decides)
    assert np.isclose(figures["text_decides_mean_text_weight"], text_decides.mean())
    assert np.isclose(figures["image_decides_mean_text_weight"], image_decides.mean())
    assert np.isclose(figures["routing_auc"], _pairwise_auc(text_decides, image_decides))
    without_unimodal = RoutingCounts()
    without_unimodal.add(s_t)
    assert "routing_auc" not in without_unimodal.figures()
    assert RoutingCounts().figures() == {"products": 0}


def test_routing_with_no_image_decides_product_has_no_mean_and_no_auc():
    counts = RoutingCounts()
    counts.add(np.array([0.9, 0.6, 0.4]), np.array([1, 1, 0], bool), np.array([0, 1, 0], bool))
    figures = counts.figures()
    assert figures["text_decides_products"] == 1 and figures["image_decides_products"] == 0
    assert figures["text_decides_mean_text_weight"] == 0.9
    assert figures["image_decides_mean_text_weight"] is None and figures["routing_auc"] is None


def test_the_evaluation_reports_the_spread_and_the_routing_auc():
    counts = RoutingCounts()
    counts.add(np.array([0.9, 0.8, 0.2, 0.3, 0.5]), np.array([1, 1, 0, 0, 1], bool), np.array([0, 0, 1, 1, 1], bool))
    evaluation = _evaluation()
    evaluation = dataclasses.replace(evaluation, stream_weights={**evaluation.stream_weights,
                                                                 "routing": counts.figures()})
    scalars = evaluation.scalars()
    assert scalars["routing_auc"] == 1.0 and np.isclose(scalars["text_weight_std"], counts.figures()["text_weight_std"])
    page = _Page()
    page.feed(render_html(evaluation, Verdict(True, "passed"), "model/uri"))
    text = " ".join(" ".join(page.text).split())
    assert "routing AUC 1.00" in text
    assert "On the 2 products only the text model gets right, mean s_t 0.850" in text


def _streams(n: int, seed: int):
    """(f_t, f_i, labels, text_informs): per example one stream, drawn at random, is its class's
    prototype plus noise; the other is noise alone, of the same scale. A head that routes gives the
    first more weight."""
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(0).normal(size=(CLASSES, DIM)) * 1.5
    labels = rng.integers(0, CLASSES, n)
    text_informs = rng.random(n) < 0.5

    def stream(informs):
        noise = rng.normal(size=(n, DIM)) * np.where(informs, 1.0, 1.8)[:, None]
        return (prototypes[labels] * informs[:, None] + noise).astype("float32")

    return stream(text_informs), stream(~text_informs), labels, text_informs


@pytest.mark.parametrize("fusion", [KEYLESS, KEY_BASED, HANET])
def test_the_attention_weights_follow_the_informative_stream(fusion):
    keras.utils.set_random_seed(0)
    f_t, f_i, labels, _ = _streams(2000, 1)
    head = fusion_head(fusion, CLASSES, HeadConfig(width=32, key_dim=16, hybrid_hidden_units=8))
    text, image = keras.Input((DIM,)), keras.Input((DIM,))
    model = keras.Model([text, image], head(text, image))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  ["accuracy"])
    model.fit([f_t, f_i], labels, batch_size=32, epochs=20, verbose=0)
    e_t, e_i, e_labels, text_informs = _streams(1000, 2)
    s_t = head.stream_weights(e_t, e_i).numpy()[:, 0]
    assert model.evaluate([e_t, e_i], e_labels, verbose=0)[1] > 0.85
    assert s_t.std() >= 0.1
    assert roc_auc(s_t[text_informs], s_t[~text_informs]) >= 0.8


def _experts(n: int, seed: int):
    """(p_text, p_image, lexical log-probs, informs [n] in 0..2): per example one expert, drawn at random,
    is sure of the true class; the other two are torn between two classes drawn at random, with log-
    probabilities spread wider than the informative one's, so the plain product (each expert's share its
    spread) leans towards them. A head that routes learns the shape of a sure expert and weighs it."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    informs = rng.integers(0, 3, n)
    streams = []
    for m in range(3):
        torn = np.full((n, CLASSES), -3.0)
        for pick in range(2):
            torn[np.arange(n), rng.integers(0, CLASSES, n)] = 3.0
        sure = np.zeros((n, CLASSES))
        sure[np.arange(n), labels] = 2.5
        logits = np.where((informs == m)[:, None], sure, torn) + rng.normal(scale=0.3, size=(n, CLASSES))
        streams.append(logits - np.log(np.exp(logits).sum(-1, keepdims=True)))  # log-probabilities
    return np.exp(streams[0]).astype("float32"), np.exp(streams[1]).astype("float32"), \
        streams[2].astype("float32"), labels, informs


def test_the_expert_attention_weights_follow_the_informative_expert():
    """hanet_experts over three expert streams, one informative per example: its weights (s per expert,
    and the title's share s_text + s_lexical that the evaluation reports) follow it."""
    keras.utils.set_random_seed(0)
    p_t, p_i, lexical, labels, _ = _experts(3000, 1)
    head = fusion_head(HANET_EXPERTS, CLASSES, HeadConfig(key_dim=16, hybrid_hidden_units=8, dropout=0.0))
    network = DecisionNetwork(head)
    inputs = [keras.Input((CLASSES,)) for _ in range(3)]
    model = keras.Model(inputs, network(inputs[0], inputs[1], lexical=inputs[2]))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  ["accuracy"])
    e_t, e_i, e_lexical, e_labels, informs = _experts(1000, 2)
    plain = model.evaluate([e_t, e_i, e_lexical], e_labels, verbose=0)[1]  # the head starts as the plain product
    model.fit([p_t, p_i, lexical], labels, batch_size=32, epochs=10, verbose=0)
    assert model.evaluate([e_t, e_i, e_lexical], e_labels, verbose=0)[1] > max(0.9, plain + 0.2)
    s, _, _ = head.attend(head.expert_log_probs(e_t, e_i, e_lexical), training=False)
    s = s.numpy()
    for m in range(3):
        assert roc_auc(s[informs == m, m], s[informs != m, m]) >= 0.9
    title = s[:, 0] + s[:, 2]
    assert title.std() >= 0.1
    assert roc_auc(title[informs != 1], title[informs == 1]) >= 0.8
