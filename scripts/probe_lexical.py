"""Probe: a lexical (TF-IDF n-gram) expert beside the project's frozen encoders, and ways to fuse them.

Every choice (regularization, fusion form) is made on the validation split, which is carved out of the
train split exactly as the trainer does (common/splits + trainer/data: split_of for eval, the salted
validation hash for validation); the eval split is scored only for the final choices (--eval).

    .venv/bin/python scripts/probe_lexical.py cache --catalog ../shared/data/hm-products/products.csv \
        --label-column product_type --out /tmp/lexical_probe/hm.npz
    .venv/bin/python scripts/probe_lexical.py table --cache /tmp/lexical_probe/hm.npz --eval

`cache` runs the project's local encoders once (EfficientNet-Lite0 at 224 px, pooled; MiniLM mean-pooled,
64 tokens) and stores their features with ids, titles, labels and splits; `table` fits scikit-learn models
on them and prints top-1 for every row. `quick` fits each expert once with given C (a loaded machine):
plain and fixed-weight products of two and three experts, with `--extra-cache` (a cache made with
`--extra-text-columns`) the lexical expert on the extra text too.
"""
from __future__ import annotations

import argparse
import csv
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from common import features, poe  # noqa: E402

PRETRAINED = pathlib.Path(__file__).resolve().parents[1] / "pretrained"
VALIDATION_FRACTION = 0.125  # common/params.py's validation_fraction default
FOLDS = 3  # cross-fitting folds of the out-of-fold log-probabilities the fusion heads learn from


# --------------------------------------------------------------------------------------------
# cache


def read_catalog(path: str, label_column: str, text_columns: list[str]):
    rows = list(csv.DictReader(open(path, newline="", encoding="utf-8")))
    ids = [r["id"] for r in rows]
    titles = [" ".join([r["title"]] + [r[c] for c in text_columns if r.get(c)]) for r in rows]
    labels = [r[label_column] for r in rows]
    images = [os.path.join(os.path.dirname(path), r["image"]) for r in rows]
    return ids, titles, labels, images


def splits_of(ids: list[str], eval_fraction: float) -> np.ndarray:
    """eval / validation / train per product, as the pipeline splits them."""
    import tensorflow as tf

    from components.preprocess.job import split_of
    from trainer.data import in_validation

    base = np.array([split_of(i, eval_fraction) for i in ids])
    validation = in_validation(tf.constant(ids), VALIDATION_FRACTION).numpy()
    return np.where(base == features.EVAL_SPLIT, features.EVAL_SPLIT,
                    np.where(validation, features.VALIDATION_SPLIT, features.TRAIN_SPLIT))


def image_features(paths: list[str], image_size: int = 224, batch: int = 32) -> np.ndarray:
    import tensorflow as tf

    from components.preprocess.transform import resize_image
    from trainer.data import decode_images
    from trainer.encoders import image_encoder

    cnn = image_encoder(str(PRETRAINED / "efficientnet_lite0_imagenet.h5"), "lite0", image_size)
    out = []
    for start in range(0, len(paths), batch):
        data = tf.constant([open(p, "rb").read() for p in paths[start:start + batch]])
        pixels = decode_images(resize_image(data, image_size), image_size)
        out.append(cnn(pixels, training=False).numpy())
        print(f"[cache] images {start + len(data)}/{len(paths)}", flush=True)
    return np.concatenate(out)


def text_features(titles: list[str], max_seq_length: int = 64, batch: int = 128) -> np.ndarray:
    import tensorflow as tf

    from components.preprocess.tokenizer import BertTokenizer, encoder_lower_case, encoder_vocab_file
    from trainer.encoders import pool_text, text_encoder

    handle = str(PRETRAINED / "bert_minilm_l6")
    tokenizer = BertTokenizer(encoder_vocab_file(handle), max_seq_length, encoder_lower_case(handle))
    encoder = text_encoder(handle, trainable=False)
    out = []
    for start in range(0, len(titles), batch):
        inputs = {k: tf.cast(v, tf.int32) for k, v in tokenizer(tf.constant(titles[start:start + batch])).items()}
        outputs = encoder(inputs)
        out.append(pool_text(outputs["sequence_output"], outputs["pooled_output"],
                             inputs[features.INPUT_MASK_KEY], "mean").numpy())
    return np.concatenate(out)


def cache(args) -> None:
    extra = [c for c in args.extra_text_columns.split(",") if c]
    ids, titles, labels, images = read_catalog(args.catalog, args.label_column, extra)
    started = time.monotonic()
    split = splits_of(ids, args.eval_fraction)
    text = text_features(titles, args.max_seq_length)
    print(f"[cache] text features {text.shape} in {time.monotonic() - started:.0f} s", flush=True)
    image = image_features(images, args.image_size)
    print(f"[cache] image features {image.shape} in {time.monotonic() - started:.0f} s", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(args.out, ids=np.array(ids), titles=np.array(titles), labels=np.array(labels), split=split,
             text=text.astype(np.float32), image=image.astype(np.float32), image_size=args.image_size,
             max_seq_length=args.max_seq_length)


# --------------------------------------------------------------------------------------------
# table

TEXT_CS, DENSE_CS = poe.TEXT_CS, poe.IMAGE_CS
FLOOR = poe.LOG_PROB_FLOOR


class Data:
    def __init__(self, path: str):
        z = np.load(path)
        self.titles = z["titles"].tolist()
        names = sorted(set(z["labels"].tolist()))
        self.y = np.searchsorted(names, z["labels"])
        self.classes = len(names)
        self.split = z["split"]
        self.text, self.image = z["text"], z["image"]

    def rows(self, *splits) -> np.ndarray:
        return np.flatnonzero(np.isin(self.split, splits))


lexical_model, dense_model = poe.text_expert, poe.image_expert  # the baseline's own experts


def log_probs(model, x, classes: int) -> np.ndarray:
    out = np.full((len(x) if isinstance(x, list) else x.shape[0], classes), FLOOR)
    out[:, model.classes_] = np.maximum(model.predict_log_proba(x), FLOOR)
    return out


def take(x, rows):
    return [x[i] for i in rows] if isinstance(x, list) else x[rows]


def fit_expert(make, c, x, y, fit_rows, score_rows, classes, folds: int = FOLDS):
    """(log-probs of score_rows from a fit on fit_rows, out-of-fold log-probs of fit_rows)."""
    from sklearn.model_selection import StratifiedKFold, KFold

    model = make(c).fit(take(x, fit_rows), y[fit_rows])
    scored = log_probs(model, take(x, score_rows), classes)
    oof = np.zeros((len(fit_rows), classes))
    counts = np.bincount(y[fit_rows])
    splitter = StratifiedKFold(folds, shuffle=True, random_state=0) if counts[counts > 0].min() >= folds \
        else KFold(folds, shuffle=True, random_state=0)
    for inner, outer in splitter.split(fit_rows, y[fit_rows]):
        fold = make(c).fit(take(x, fit_rows[inner]), y[fit_rows[inner]])
        oof[outer] = log_probs(fold, take(x, fit_rows[outer]), classes)
    return scored, oof


def choose_c(make, cs, x, y, fit_rows, val_rows, classes, name):
    best = None
    for c in cs:
        model = make(c).fit(take(x, fit_rows), y[fit_rows])
        acc = float(np.mean(log_probs(model, take(x, val_rows), classes).argmax(1) == y[val_rows]))
        print(f"  {name} C={c:g}: validation top-1 {100 * acc:.2f}", flush=True)
        if best is None or acc > best[1]:
            best = (c, acc)
    return best[0]


def attention_product(train_lp: list, train_y, score_lp: list, classes: int, seed: int = 0):
    """HANet's keyless attention over M experts' log-probabilities: e_m = v·tanh(W_m x_m + b_m),
    s = softmax(e), fused = M Σ s_m log p_m; trained on out-of-fold log-probabilities. Returns
    (fused scores of score_lp, s [n, M])."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    import tf_keras

    tf.random.set_seed(seed)
    m = len(train_lp)

    def describe(lp):  # the expert's log-probs and its confidence profile (top-5 sorted, entropy)
        top = -np.sort(-lp, axis=1)[:, :5]
        p = np.exp(lp)
        entropy = -(p * lp).sum(1, keepdims=True)
        return np.concatenate([lp, top, entropy], 1).astype(np.float32)

    inputs = [tf_keras.Input([classes + 6]) for _ in range(m)]
    v = tf_keras.layers.Dense(1, use_bias=False)
    energies = [v(tf_keras.layers.Dense(16, activation="tanh", kernel_regularizer=tf_keras.regularizers.l2(1e-3))(x))
                for x in inputs]
    s = tf_keras.layers.Softmax()(tf_keras.layers.Concatenate()(energies))
    lps = [tf_keras.Input([classes]) for _ in range(m)]
    stacked = tf.stack(lps, 1)  # [n, M, C]
    fused = float(m) * tf.reduce_sum(stacked * s[:, :, None], 1)
    model = tf_keras.Model(inputs + lps, [fused, s])
    train = model.__class__(model.inputs, model.outputs[0])
    train.compile(tf_keras.optimizers.Adam(3e-3),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    xs = [describe(lp) for lp in train_lp] + [lp.astype(np.float32) for lp in train_lp]
    train.fit(xs, train_y, batch_size=64, epochs=40, verbose=0, validation_split=0.1,
              callbacks=[tf_keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)])
    scores, weights = model.predict([describe(lp) for lp in score_lp] + [lp.astype(np.float32) for lp in score_lp],
                                    verbose=0)
    return scores, weights


def global_weights(train_lp: list, train_y, grid=np.linspace(0.1, 0.9, 9)):
    """The fixed weighted product: (w, 1-w) for two experts, chosen on out-of-fold log-probs."""
    accs = [np.mean((w * train_lp[0] + (1 - w) * train_lp[1]).argmax(1) == train_y) for w in grid]
    return float(grid[int(np.argmax(accs))])


def routing_auc(s_first: np.ndarray, first_right: np.ndarray, second_right: np.ndarray) -> float:
    """How well the first expert's weight separates (first right, second wrong) from the reverse."""
    a, b = s_first[first_right & ~second_right], s_first[~first_right & second_right]
    if not len(a) or not len(b):
        return float("nan")
    return float(np.mean(a[:, None] > b[None, :]) + 0.5 * np.mean(a[:, None] == b[None, :]))


def experiments(d: Data, fit_rows, score_rows, cs: dict, two_experts: bool = False) -> dict:
    """Every row's top-1 on score_rows (experts fit on fit_rows with the given C), plus attention figures."""
    y, k = d.y, d.classes
    lex, lex_oof = fit_expert(lexical_model, cs["lex"], d.titles, y, fit_rows, score_rows, k)
    img, img_oof = fit_expert(dense_model, cs["img"], d.image, y, fit_rows, score_rows, k)
    if two_experts:
        return _two_expert_rows(lex, lex_oof, img, img_oof, y[fit_rows], y[score_rows], k)
    bert, bert_oof = fit_expert(dense_model, cs["bert"], d.text, y, fit_rows, score_rows, k)
    # The lexical expert inside the text stream: BERT's features with the out-of-fold lexical log-probs.
    both = np.concatenate([d.text, np.zeros((len(y), k))], 1)
    both[fit_rows, d.text.shape[1]:] = lex_oof
    both[score_rows, d.text.shape[1]:] = lex
    txt, txt_oof = fit_expert(dense_model, cs["bert"], both, y, fit_rows, score_rows, k)
    truth = y[score_rows]
    fy = y[fit_rows]

    def acc(scores):
        return float(np.mean(scores.argmax(1) == truth))

    rows = {"lexical (tfidf word+char LR)": acc(lex), "image (Lite0 LR)": acc(img), "bert (MiniLM LR)": acc(bert),
            "text stream = LR[bert ; oof lexical]": acc(txt),
            "poe lexical×image": acc(lex + img), "poe bert×image (two neural streams)": acc(bert + img),
            "poe text-stream(bert+lexical)×image": acc(txt + img),
            "poe lexical×bert×image (third stream)": acc(lex + bert + img)}
    w = global_weights([lex_oof, img_oof], fy)
    rows[f"weighted poe lexical×image (fixed w_t={w:.1f})"] = acc(w * lex + (1 - w) * img)
    fused, s = attention_product([lex_oof, img_oof], fy, [lex, img], k)
    rows["attention poe lexical×image (per product)"] = acc(fused)
    lex_right, img_right = lex.argmax(1) == truth, img.argmax(1) == truth
    extra = {"attention lexical×image: s_text std": float(s[:, 0].std()),
             "attention lexical×image: routing AUC": routing_auc(s[:, 0], lex_right, img_right)}
    fused3, s3 = attention_product([lex_oof, bert_oof, img_oof], fy, [lex, bert, img], k)
    rows["attention poe lexical×bert×image (third stream)"] = acc(fused3)
    fused2, _ = attention_product([txt_oof, img_oof], fy, [txt, img], k)
    rows["attention poe text-stream(bert+lexical)×image"] = acc(fused2)
    from sklearn.linear_model import LogisticRegression
    stack = LogisticRegression(C=1.0, max_iter=500).fit(np.concatenate([lex_oof, img_oof], 1), fy)
    rows["stacked LR on oof [lexical ; image] log-probs"] = float(
        np.mean(stack.predict(np.concatenate([lex, img], 1)) == truth))
    extra["attention 3 streams: mean s (lexical, bert, image)"] = [round(float(v), 3) for v in s3.mean(0)]
    return rows, extra


def _two_expert_rows(lex, lex_oof, img, img_oof, fy, truth, k):
    """The lexical × image rows only (the bert rows cost three more experts)."""
    def acc(scores):
        return float(np.mean(scores.argmax(1) == truth))

    rows = {"lexical (tfidf word+char LR)": acc(lex), "image (Lite0 LR)": acc(img), "poe lexical×image": acc(lex + img)}
    w = global_weights([lex_oof, img_oof], fy)
    rows[f"weighted poe lexical×image (fixed w_t={w:.1f})"] = acc(w * lex + (1 - w) * img)
    fused, s = attention_product([lex_oof, img_oof], fy, [lex, img], k)
    rows["attention poe lexical×image (per product)"] = acc(fused)
    lex_right, img_right = lex.argmax(1) == truth, img.argmax(1) == truth
    return rows, {"attention lexical×image: s_text std": float(s[:, 0].std()),
                  "attention lexical×image: routing AUC": routing_auc(s[:, 0], lex_right, img_right)}


def table(args) -> None:
    d = Data(args.cache)
    train = d.rows(features.TRAIN_SPLIT)
    val = d.rows(features.VALIDATION_SPLIT)
    print(f"{args.cache}: {d.classes} classes; train {len(train)}, validation {len(val)}, "
          f"eval {len(d.rows(features.EVAL_SPLIT))}", flush=True)
    grids = {"lex": args.c_lexical or TEXT_CS, "img": args.c_image or DENSE_CS, "bert": args.c_bert or DENSE_CS}
    cs = {"lex": choose_c(lexical_model, grids["lex"], d.titles, d.y, train, val, d.classes, "lexical"),
          "img": choose_c(dense_model, grids["img"], d.image, d.y, train, val, d.classes, "image")}
    if not args.two_experts:
        cs["bert"] = choose_c(dense_model, grids["bert"], d.text, d.y, train, val, d.classes, "bert")
    print(f"chosen on validation: {cs}", flush=True)
    rows, extra = experiments(d, train, val, cs, args.two_experts)
    final = {}
    if args.eval:
        final, final_extra = experiments(d, np.concatenate([train, val]), d.rows(features.EVAL_SPLIT), cs,
                                         args.two_experts)
    # Eval is shown for the final choices only: each expert, the fixed product (tfidf_image_poe) and the
    # fusion best on validation.
    best = max((n for n in rows if n.startswith(("poe", "weighted", "attention", "stacked"))), key=rows.get)
    shown = {"lexical (tfidf word+char LR)", "image (Lite0 LR)", "poe lexical×image", best}
    print(f"\nbest fusion on validation: {best}")
    print("\n| model | validation top-1 |" + (" eval top-1 |" if args.eval else ""))
    print("|---|---|" + ("---|" if args.eval else ""))
    for name, value in rows.items():
        print(f"| {name} | {100 * value:.2f} |" + (
            (f" {100 * final[name]:.2f} |" if name in shown else " – |") if args.eval else ""))
    for name, value in extra.items():
        print(f"{name}: validation {value}" + (f", eval {final_extra[name]}" if args.eval else ""))



def quick(args) -> None:
    """One fit per expert, on the train split, with given C (for a loaded machine: no C grid, no
    out-of-fold scores, so no attention rows): every row on validation, and on eval."""
    d = Data(args.cache)
    extra = Data(args.extra_cache) if args.extra_cache else None
    train, val, ev = d.rows(features.TRAIN_SPLIT), d.rows(features.VALIDATION_SPLIT), d.rows(features.EVAL_SPLIT)
    scored = np.concatenate([val, ev])
    started = time.monotonic()

    def fit(make, c, x, name):
        model = make(c).fit(take(x, train), d.y[train])
        lp = log_probs(model, take(x, scored), d.classes)
        print(f"[quick] {name} (C={c:g}) fitted in {time.monotonic() - started:.0f} s", flush=True)
        return lp[:len(val)], lp[len(val):]

    experts = {"lexical": fit(lexical_model, args.c_lexical, d.titles, "lexical"),
               "image": fit(dense_model, args.c_image, d.image, "image"),
               "bert": fit(dense_model, args.c_bert, d.text, "bert")}
    if extra is not None:
        experts["lexical+extra"] = fit(lexical_model, args.c_lexical, extra.titles, "lexical with the extra text")
    truth = (d.y[val], d.y[ev])
    rows = {name: (lambda i, n=name: experts[n][i]) for name in experts}
    grid = np.linspace(0.1, 0.9, 9)
    for text in [t for t in ("lexical", "lexical+extra", "bert") if t in experts]:
        rows[f"poe {text}×image"] = lambda i, t=text: experts[t][i] + experts["image"][i]
        w = max(grid, key=lambda w, t=text: np.mean((w * experts[t][0] + (1 - w) * experts["image"][0]).argmax(1)
                                                   == truth[0]))
        rows[f"weighted poe {text}×image (w_text={w:.1f} on validation)"] = \
            lambda i, t=text, w=w: w * experts[t][i] + (1 - w) * experts["image"][i]
    for text in [t for t in ("lexical", "lexical+extra") if t in experts]:
        rows[f"poe {text}×bert×image"] = lambda i, t=text: experts[t][i] + experts["bert"][i] + experts["image"][i]
        a, b = max(((a, b) for a in grid for b in grid if a + b < 1), key=lambda ab, t=text: np.mean((
            ab[0] * experts[t][0] + ab[1] * experts["bert"][0] + (1 - sum(ab)) * experts["image"][0]).argmax(1)
            == truth[0]))
        rows[f"weighted poe {text}×bert×image (w={a:.1f},{b:.1f},{1 - a - b:.1f} on validation)"] = \
            lambda i, t=text, a=a, b=b: a * experts[t][i] + b * experts["bert"][i] + (1 - a - b) * experts["image"][i]
    print(f"\n| model (experts fit on train, {len(train)} products) | validation top-1 ({len(val)}) | "
          f"eval top-1 ({len(ev)}) |\n|---|---|---|")
    for name, scores in rows.items():
        print(f"| {name} | " + " | ".join(f"{100 * np.mean(scores(i).argmax(1) == truth[i]):.2f}" for i in (0, 1)) + " |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="run the encoders once and store their features")
    c.add_argument("--catalog", required=True)
    c.add_argument("--label-column", required=True)
    c.add_argument("--extra-text-columns", default="")
    c.add_argument("--eval-fraction", type=float, default=features.DEFAULT_EVAL_FRACTION)
    c.add_argument("--image-size", type=int, default=224)
    c.add_argument("--max-seq-length", type=int, default=64)
    c.add_argument("--out", required=True)
    t = sub.add_parser("table", help="the probe's table on cached features")
    t.add_argument("--cache", required=True)
    t.add_argument("--eval", action="store_true", help="also score the final choices on eval")
    t.add_argument("--two-experts", action="store_true", help="the lexical × image rows only")
    for name in ("lexical", "image", "bert"):
        t.add_argument(f"--c-{name}", type=float, nargs="+", help=f"the {name} expert's C candidates")
    q = sub.add_parser("quick", help="one fit per expert with given C: validation and eval rows")
    q.add_argument("--cache", required=True)
    q.add_argument("--extra-cache", help="a cache of the same products whose text holds the extra text columns")
    q.add_argument("--c-lexical", type=float, default=10.0)
    q.add_argument("--c-image", type=float, default=0.01)
    q.add_argument("--c-bert", type=float, default=0.1)
    args = parser.parse_args(argv)
    {"cache": cache, "table": table, "quick": quick}[args.command](args)


if __name__ == "__main__":
    main()
