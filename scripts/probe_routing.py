"""Probe: can a per-product weighted product of experts route, and what must its weights read?

The experts are the ones hanet_experts fuses: the text model's, the image model's and the lexical expert's
log-probabilities ℓ_m [products, classes]. A gate g maps each product's confidence features to weights
s = softmax_m(g(...)), and the fused logits are M Σ_m s_m ℓ_m (hanet_experts' eq. 7). The gates are fitted by
the NLL of that weighted product on the experts' out-of-fold train scores (the records hanet_experts trains
on), chosen on validation; eval is printed for the note only (--eval).

    .venv/bin/python scripts/probe_routing.py cache --work-dir /tmp/hm-bench/out --out /tmp/attend/experts.npz
    .venv/bin/python scripts/probe_routing.py table --cache /tmp/attend/experts.npz --eval
    .venv/bin/python scripts/probe_routing.py diagnose --work-dir /tmp/hm-bench/out --cache /tmp/attend/experts.npz

`cache` reads a finished benchmark work dir (tune frozen): the cross-fitted probability records (train),
the whole-train text and image models applied to the feature cache (validation, eval) and the run's lexical
expert (out of fold on train). `table` prints top-1, the spread of the title's weight s_t (text model +
lexical expert) and the routing AUC (common/metrics.py roc_auc over Table 1's disagreement products: text
model right and image model wrong against the reverse), and the same AUC over the lexical expert's
disagreements with the image model. `diagnose` reads the trained hanet_experts head of that run and prints
what its hybrid scorer D sees.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import re
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from common import features  # noqa: E402
from common.metrics import roc_auc  # noqa: E402

SPLITS = (features.TRAIN_SPLIT, features.VALIDATION_SPLIT, features.EVAL_SPLIT)
EXPERTS = ("text", "image", "lexical")
FLOOR = -20.7  # trainer/fusion.py EXPERT_LOG_PROB_FLOOR


# --------------------------------------------------------------------------------------------
# cache


def _records(pattern: str, spec: dict):
    import tensorflow as tf

    from trainer import data

    out = {key: [] for key in spec}
    for batch in data.read_records(pattern, shuffle=False).batch(1024).map(lambda s: tf.io.parse_example(s, spec)):
        for key in spec:
            out[key].append(batch[key].numpy())
    return {key: np.concatenate(values) for key, values in out.items()}


def _classifier(stage_dir: str):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(stage_dir, "final", "weights"))
    prefix = "layer_with_weights-0/classifier/"
    return (reader.get_tensor(prefix + "kernel/.ATTRIBUTES/VARIABLE_VALUE"),
            reader.get_tensor(prefix + "bias/.ATTRIBUTES/VARIABLE_VALUE"))


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def cache(args) -> None:
    import tensorflow as tf

    run = os.path.join(args.work_dir, "runs", args.tune)
    records = glob.glob(os.path.join(run, "probabilities", f"crossfit*-seed{args.seed}-*"))
    if len(records) != 1:
        raise SystemExit(f"expected one cross-fitted probability dir for seed {args.seed} under {run}, got {records}")
    rates = dict(re.findall(r"(text_only|image_only)([0-9.]+(?:e-?[0-9]+)?)", os.path.basename(records[0])))
    stages = os.path.join(run, "stages", f"seed{args.seed}")
    text_w, image_w = (_classifier(os.path.join(stages, f"{name}-lr{rates[name]}")) for name in ("text_only",
                                                                                                 "image_only"))
    lexical_dir = os.path.join(run, "lexical_expert")
    with open(os.path.join(lexical_dir, "expert.json")) as f:
        lexical_ids = json.load(f)["ids"]
    lexical = np.load(os.path.join(lexical_dir, "arrays.npz"))["log_probs"]
    lexical_row = {product: row for row, product in enumerate(lexical_ids)}
    with open(os.path.join(args.work_dir, "feature_cache", "cache.json")) as f:
        dims = json.load(f)
    out = {}
    for split in SPLITS:
        if split == features.TRAIN_SPLIT:  # the cross-fitted records hanet_experts trains on
            classes = text_w[0].shape[1]
            spec = {features.TEXT_PROBABILITIES_KEY: tf.io.FixedLenFeature([classes], tf.float32),
                    features.IMAGE_PROBABILITIES_KEY: tf.io.FixedLenFeature([classes], tf.float32)}
            got = _records(os.path.join(records[0], split, "*"), {
                **spec, features.ID_KEY: tf.io.FixedLenFeature([], tf.string),
                features.LABEL_ID_KEY: tf.io.FixedLenFeature([], tf.int64)})
            lp_t = np.log(np.maximum(got[features.TEXT_PROBABILITIES_KEY], 1e-30))
            lp_i = np.log(np.maximum(got[features.IMAGE_PROBABILITIES_KEY], 1e-30))
        else:  # the whole-train unimodal models on the feature cache
            got = _records(os.path.join(args.work_dir, "feature_cache", split, "*"), {
                features.TEXT_FEATURES_KEY: tf.io.FixedLenFeature([dims["text_dim"]], tf.float32),
                features.IMAGE_FEATURES_KEY: tf.io.FixedLenFeature([dims["image_dim"]], tf.float32),
                features.ID_KEY: tf.io.FixedLenFeature([], tf.string),
                features.LABEL_ID_KEY: tf.io.FixedLenFeature([], tf.int64)})
            lp_t = _log_softmax(got[features.TEXT_FEATURES_KEY] @ text_w[0] + text_w[1])
            lp_i = _log_softmax(got[features.IMAGE_FEATURES_KEY] @ image_w[0] + image_w[1])
        ids = [i.decode() for i in got[features.ID_KEY]]
        lp_l = lexical[[lexical_row[i] for i in ids]]
        out[split] = np.stack([lp_t, lp_i, lp_l], 1).astype(np.float32)  # [n, M, classes]
        out[f"{split}_labels"] = got[features.LABEL_ID_KEY]
        print(f"{split}: {len(ids)} products; top-1 " + ", ".join(
            f"{e} {np.mean(out[split][:, m].argmax(-1) == out[f'{split}_labels']):.4f}" for m, e in enumerate(EXPERTS)))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(args.out, **out)
    print(f"wrote {args.out}")


# --------------------------------------------------------------------------------------------
# gates


def confidence(log_probs: np.ndarray, bounded: bool = False) -> np.ndarray:
    """[n, M, C] → [n, M, 3]: each expert's max log-prob, top-1 − top-2 margin and entropy; `bounded`:
    the top probability, the margin in probability and the entropy over log C, each in [0, 1]."""
    top2 = -np.sort(-log_probs, axis=-1)[..., :2]
    entropy = -(np.exp(log_probs) * log_probs).sum(-1)
    if bounded:
        p = np.exp(top2)
        return np.stack([p[..., 0], p[..., 0] - p[..., 1], entropy / np.log(log_probs.shape[-1])], -1)
    return np.stack([top2[..., 0], top2[..., 0] - top2[..., 1], entropy], -1)


class Gate:
    """s = softmax_m(g(features)); logits = M Σ_m s_m ℓ_m; fitted by full-batch Adam on the NLL + l2 on g."""

    def __init__(self, kind: str, hidden: int = 16, l2: float = 1e-3, steps: int = 600, seed: int = 0,
                 values: str = "raw", bounded: bool = False):
        self.kind, self.hidden, self.l2, self.steps, self.seed = kind, hidden, l2, steps, seed
        # "raw": ℓ_m, logits M Σ s_m ℓ_m; "normalized": v_m = ℓ_m standardized over the classes (σ_m its
        # spread), logits τ Σ s_m v_m; "share": the same v_m, s_m = softmax_m(log σ_m + g), logits
        # e^t (Σ_k σ_k) Σ_m s_m v_m (s_m is stream m's share of the fused scores; g = 0, t = 0: the plain product)
        self.values = values
        self.bounded = bounded  # bounded confidence features, not standardized on train (what a head can read)

    def _inputs(self, log_probs, mean=None, std=None):
        c = confidence(log_probs, self.bounded)  # [n, M, 3]
        if self.bounded:
            return c.astype(np.float32), 0.0, 1.0
        if mean is None:
            mean, std = c.mean(0), c.std(0) + 1e-6
        return ((c - mean) / std).astype(np.float32), mean, std

    def fit(self, log_probs, labels):
        import tensorflow as tf

        tf.random.set_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        x, self.mean, self.std = self._inputs(log_probs)
        n, m, f = x.shape
        init = lambda *shape: tf.Variable(  # noqa: E731 (Glorot's scale, as Keras's Dense starts)
            rng.normal(scale=np.sqrt(2 / sum(shape)), size=shape).astype(np.float32))
        zeros = lambda *shape: tf.Variable(np.zeros(shape, np.float32))  # noqa: E731
        if self.kind == "fixed":  # a weight per expert, none per product
            self.params = {"prior": zeros(m)}
        elif self.kind == "own-linear":  # expert m's weight reads expert m's confidence only
            self.params = {"w": zeros(m, f), "prior": zeros(m)}
        elif self.kind == "shared-linear":  # one rule for every expert (as D is shared), a prior per expert
            self.params = {"w": zeros(f), "prior": zeros(m)}
        elif self.kind == "all-linear":  # every weight reads every expert's confidence
            self.params = {"w": zeros(m * f, m), "prior": zeros(m)}
        elif self.kind == "shared-mlp":  # eq. 6's D, shared by the streams, reading [c_m, one-hot m]
            self.params = {"w1": init(f + m, self.hidden), "b1": zeros(self.hidden), "w2": zeros(self.hidden, 1),
                           "prior": zeros(m)}
        elif self.kind == "all-mlp":
            self.params = {"w1": init(m * f, self.hidden), "b1": zeros(self.hidden), "w2": zeros(self.hidden, m),
                           "prior": zeros(m)}
        else:
            raise ValueError(self.kind)
        self.params["temperature"] = tf.Variable(np.float32(0.0 if self.values == "share" else np.log(np.expm1(m))))
        lp, y = tf.constant(self.stream_values(log_probs)), tf.constant(labels)
        xt = tf.constant(x), tf.constant(self.spread(log_probs))
        optimizer = tf.keras.optimizers.Adam(0.05)
        variables = [v for k, v in self.params.items() if k != "temperature" or self.values != "raw"]
        for _ in range(self.steps):
            with tf.GradientTape() as tape:
                logits = self._logits(xt, lp)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
                loss += self.l2 * sum(tf.reduce_sum(v ** 2) for k, v in self.params.items()
                                      if k not in ("prior", "temperature"))
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return self

    def _raw(self, inputs):
        import tensorflow as tf

        x, spread = inputs
        offset = tf.math.log(spread) if self.values == "share" else 0.0
        return self._gate(x) + offset

    def _gate(self, x):
        import tensorflow as tf

        p = self.params
        n, m, f = x.shape
        if self.kind == "fixed":
            return tf.zeros([tf.shape(x)[0], m]) + p["prior"]
        if self.kind in ("own-linear", "shared-linear"):
            return tf.reduce_sum(x * p["w"], -1) + p["prior"]
        if self.kind == "shared-mlp":
            identity = tf.broadcast_to(tf.eye(m), [tf.shape(x)[0], m, m])
            hidden = tf.nn.relu(tf.concat([x, identity], -1) @ p["w1"] + p["b1"])
            return tf.squeeze(hidden @ p["w2"], -1) + p["prior"]
        flat = tf.reshape(x, [-1, m * f])
        if self.kind == "all-linear":
            return flat @ p["w"] + p["prior"]
        return tf.nn.relu(flat @ p["w1"] + p["b1"]) @ p["w2"] + p["prior"]

    @staticmethod
    def spread(log_probs):
        return np.maximum(log_probs, FLOOR).std(-1).astype(np.float32) + 1e-6

    def stream_values(self, log_probs):
        lp = np.maximum(log_probs, FLOOR).astype(np.float32)
        if self.values == "raw":
            return lp
        return (lp - lp.mean(-1, keepdims=True)) / (lp.std(-1, keepdims=True) + 1e-6)

    def _logits(self, x, lp):
        import tensorflow as tf

        s = tf.nn.softmax(self._raw(x), -1)
        fused = tf.reduce_sum(s[:, :, None] * lp, 1)
        if self.values == "share":
            return tf.exp(self.params["temperature"]) * tf.reduce_sum(x[1], -1, keepdims=True) * fused
        return tf.nn.softplus(self.params["temperature"]) * fused

    def weights(self, log_probs) -> np.ndarray:
        import tensorflow as tf

        x, _, _ = self._inputs(log_probs, self.mean, self.std)
        return tf.nn.softmax(self._raw((tf.constant(x), tf.constant(self.spread(log_probs)))), -1).numpy()

    def logits(self, log_probs) -> np.ndarray:
        return (self.weights(log_probs)[:, :, None] * self.stream_values(log_probs)).sum(1)  # argmax: τ, Σσ > 0


def routing(log_probs, labels, s):
    """(std of the title's weight, routing AUC on Table 1's sets, AUC on lexical-vs-image sets)."""
    right = log_probs.argmax(-1) == labels[:, None]  # [n, M]
    title = s[:, 0] + s[:, 2] if s.shape[1] == 3 else s[:, 0]
    text, image = right[:, 0], right[:, 1]
    lexical = right[:, 2] if s.shape[1] == 3 else right[:, 0]
    return (title.std(), roc_auc(title[text & ~image], title[~text & image]),
            roc_auc(title[lexical & ~image], title[~lexical & image]))


def table(args) -> None:
    data = np.load(args.cache)
    rows = []
    subsets = {"all": ("text × image × lexical", [0, 1, 2]), "lexical-image": ("lexical × image", [2, 1])}
    for subset_name, keep in (subsets[e] for e in args.experts):
        lp = {split: data[split][:, keep] for split in SPLITS}
        labels = {split: data[f"{split}_labels"] for split in SPLITS}
        for values, kind in [(v, k) for v in args.values for k in args.gates]:
            for l2 in ((0.0,) if kind in ("plain", "fixed") else args.l2):
                gate = Gate("fixed" if kind == "plain" else kind, l2=l2, steps=0 if kind == "plain" else args.steps,
                            values=values, bounded=args.bounded).fit(lp[features.TRAIN_SPLIT], labels[features.TRAIN_SPLIT])
                weights = {split: gate.weights(lp[split]) for split in SPLITS}
                row = {"experts": subset_name, "values": values, "gate": kind, "l2": l2}
                for split in SPLITS[1:] if args.eval else SPLITS[1:2]:
                    fused = gate.logits(lp[split])
                    row[f"{split} top-1"] = 100 * np.mean(fused.argmax(-1) == labels[split])
                    std, auc, auc_lex = routing(lp[split], labels[split], weights[split])
                    row[f"{split} s_t std"], row[f"{split} AUC"], row[f"{split} AUC lex"] = std, auc, auc_lex
                    row[f"{split} mean s"] = "/".join(f"{v:.2f}" for v in weights[split].mean(0))
                rows.append(row)
                print(" | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()), flush=True)
    columns = list(rows[0])
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |")


# --------------------------------------------------------------------------------------------
# diagnose


def diagnose(args) -> None:
    """What D (eq. 6) of the benchmark's trained hanet_experts heads read on validation, as they were built
    then: the scorers on x_m = [ℓ_m, its top 5, its entropy] (raw log-probabilities)."""
    import tensorflow as tf

    from trainer import fusion

    run = os.path.join(args.work_dir, "runs", args.tune, "stages", f"seed{args.seed}")
    lp = np.maximum(np.load(args.cache)[features.VALIDATION_SPLIT], FLOOR)
    entropy = -(np.exp(lp) * lp).sum(-1, keepdims=True)
    xs = [tf.constant(np.concatenate([lp[:, m], -np.sort(-lp[:, m], -1)[:, :5], entropy[:, m]], -1))
          for m in range(lp.shape[1])]
    for stage in sorted(glob.glob(os.path.join(run, "hanet_experts-*"))):
        path = os.path.join(stage, "final", "weights")
        reader = tf.train.load_checkpoint(path)
        key_dim = next(s for k, s in reader.get_variable_to_shape_map().items() if "keyless/values/0/kernel" in k)[1]
        keyless = fusion.MultiKeylessScores(lp.shape[1], key_dim)
        key_based = fusion.MultiKeyBasedScores(lp.shape[1], key_dim)
        keyless(xs), key_based(xs)
        # The decision network's checkpoint: layer_with_weights-0 is the DecisionNetwork, `head` its head.
        head = tf.train.Checkpoint(keyless=keyless, key_based=key_based)
        tf.train.Checkpoint(**{"layer_with_weights-0": tf.train.Checkpoint(head=head)}).read(path).expect_partial()
        prefix = "layer_with_weights-0/head/hybrid/"
        prior = reader.get_tensor(prefix + "stream_prior/.ATTRIBUTES/VARIABLE_VALUE")
        d_out = reader.get_tensor(prefix + "out/kernel/.ATTRIBUTES/VARIABLE_VALUE")
        print(f"{os.path.basename(stage)}:")
        for name, v in (("s^l (keyless)", keyless(xs).numpy()), ("s^b (key-based)", key_based(xs).numpy())):
            print(f"  {name:16s} mean {np.round(v.mean(0), 3)}  std {np.round(v.std(0), 4)}  "
                  f"share of products with max > 0.99: {np.mean(v.max(-1) > 0.99):.3f}")
        print(f"  prior β {np.round(prior, 3)}; max |d_out| {np.abs(d_out).max():.4f}")


# --------------------------------------------------------------------------------------------
# head: the real hanet_experts decision network, trained on the cached scores


def train_head(lp: dict, labels: dict, learning_rate: float, *, seed: int = 0, epochs: int = 30, patience: int = 5,
               batch_size: int = 32, config=None, log=print):
    """trainer/fusion.py's HanetExpertsHead as its DecisionNetwork (what the trainer fits), on the
    cached out-of-fold train scores, AdamW (weight decay 0.01) at `learning_rate`, early stopping on
    validation top-1 (the best epoch kept), as the benchmark's decision-level recipe does."""
    import tensorflow as tf
    import tf_keras as keras

    from trainer import fusion

    keras.utils.set_random_seed(seed)
    classes = lp[features.TRAIN_SPLIT].shape[-1]
    head = fusion.fusion_head(features.HANET_EXPERTS, classes, config or fusion.HeadConfig())
    network = fusion.DecisionNetwork(head)
    inputs = [keras.Input((classes,)) for _ in range(3)]
    model = keras.Model(inputs, network(inputs[0], inputs[1], lexical=inputs[2]))

    def split_inputs(split):
        x = lp[split]
        return [np.exp(x[:, 0]), np.exp(x[:, 1]), x[:, 2]]

    model.compile(keras.optimizers.AdamW(learning_rate, weight_decay=0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    stop = keras.callbacks.EarlyStopping("val_accuracy", patience=patience, mode="max", restore_best_weights=True)
    history = model.fit(split_inputs(features.TRAIN_SPLIT), labels[features.TRAIN_SPLIT], batch_size=batch_size,
                        epochs=epochs, verbose=0, callbacks=[stop],
                        validation_data=(split_inputs(features.VALIDATION_SPLIT), labels[features.VALIDATION_SPLIT]))
    log(f"  lr {learning_rate:g}: best validation top-1 {max(history.history['val_accuracy']):.4f} at epoch "
        f"{int(np.argmax(history.history['val_accuracy'])) + 1} of {len(history.history['val_accuracy'])}")
    predict = {}
    for split in SPLITS:
        p_t, p_i, lexical = (tf.constant(a, tf.float32) for a in split_inputs(split))
        s, _, _ = head.attend(head.expert_log_probs(p_t, p_i, lexical), training=False)
        predict[split] = (model.predict(split_inputs(split), batch_size=1024, verbose=0), s.numpy())
    return head, predict


def head_table(args) -> None:
    from trainer import calibration
    from common.metrics import CalibrationCounts

    data = np.load(args.cache)
    lp = {split: data[split] for split in SPLITS}
    labels = {split: data[f"{split}_labels"] for split in SPLITS}
    runs = {}
    for rate in args.learning_rates:
        runs[rate] = train_head(lp, labels, rate, seed=args.seed)
    top1 = {rate: np.mean(r[1][features.VALIDATION_SPLIT][0].argmax(-1) == labels[features.VALIDATION_SPLIT])
            for rate, r in runs.items()}
    chosen = max(top1, key=top1.get)
    print(f"chosen on validation: lr {chosen:g}")
    head, predict = runs[chosen]
    temperature = calibration.fit_temperature(*(predict[features.VALIDATION_SPLIT][0],
                                                labels[features.VALIDATION_SPLIT]))
    rows = []
    for split in SPLITS[1:] if args.eval else SPLITS[1:2]:
        logits, s = predict[split]
        std, auc, auc_lex = routing(lp[split], labels[split], s)
        counts = CalibrationCounts()
        counts.add(logits / temperature, labels[split])
        rows.append(f"| {split} | {100 * np.mean(logits.argmax(-1) == labels[split]):.2f} | "
                    f"{100 * counts.coverage_at(0.98)[0]:.2f} | {std:.3f} | {auc:.3f} | {auc_lex:.3f} | "
                    + "/".join(f"{v:.2f}" for v in s.mean(0)) + " |")
    print("\n| split | top-1 | coverage at 98 % | s_t std | routing AUC | AUC (lexical × image) | mean s (text/image/lexical) |"
          "\n|---|---|---|---|---|---|---|\n" + "\n".join(rows))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache")
    c.add_argument("--work-dir", required=True)
    c.add_argument("--out", required=True)
    t = sub.add_parser("table")
    t.add_argument("--cache", required=True)
    t.add_argument("--eval", action="store_true", help="also print eval (for the note; choose on validation)")
    t.add_argument("--l2", type=float, nargs="+", default=[1e-3, 1e-2])
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--bounded", action="store_true", help="bounded confidence features (as the head reads them)")
    t.add_argument("--values", nargs="+", default=["raw", "normalized"])
    t.add_argument("--gates", nargs="+", default=["plain", "fixed", "own-linear", "all-linear", "all-mlp"])
    t.add_argument("--experts", nargs="+", default=["all", "lexical-image"])
    h = sub.add_parser("head")
    h.add_argument("--cache", required=True)
    h.add_argument("--eval", action="store_true", help="also print eval (for the note; choose on validation)")
    h.add_argument("--learning-rates", type=float, nargs="+", default=[3e-3, 1e-2])
    h.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("diagnose")
    d.add_argument("--work-dir", required=True)
    d.add_argument("--cache", required=True)
    for p in (c, d):
        p.add_argument("--tune", default="frozen")
        p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    {"cache": cache, "table": table, "head": head_table, "diagnose": diagnose}[args.command](args)


if __name__ == "__main__":
    main()
