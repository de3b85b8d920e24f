"""Probe: a larger frozen image encoder (EfficientNet-Lite0/1/2) as the image expert, alone and in the
product with the lexical expert, and what each costs per product.

Splits and choices as in scripts/probe_lexical.py: eval is split_of's, validation is carved out of train
as the trainer does, every C is chosen on validation top-1, eval is scored only for the chosen C.

    .venv/bin/python scripts/probe_image.py cache --catalog ../shared/data/hm-products/products.csv \
        --label-column product_type --out /tmp/image/hm_images.npz
    .venv/bin/python scripts/probe_image.py table --cache /tmp/image/hm_images.npz [more caches]
    taskset -c 0 .venv/bin/python scripts/probe_image.py cost

`cache` decodes each photo once, resizes it as preprocess does (antialiased resize, JPEG at the
pipeline's quality) to each resolution, and stores the pooled features of every (variant, size)
configuration (with --flip also of the photo's horizontal mirror); `table` reads several caches of the
same catalog. `table` fits the lexical expert on the titles
(or titles + --extra-text-columns) and an image expert per configuration (StandardScaler +
LogisticRegression, common/poe.py's experts) and prints validation and eval top-1 of each alone and of
the product lexical × image. `cost` times the frozen forward pass per product on one thread.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import numpy as np  # noqa: E402

from common import features, poe  # noqa: E402

# (variant, image size): each Lite at the resolution it was trained at.
CONFIGS = (("lite0", 224), ("lite1", 240), ("lite2", 260))


def weights_file(variant: str) -> str:
    directory = pathlib.Path(os.environ.get("HANET_PRETRAINED_DIR", REPO / "pretrained"))
    return str(directory / f"efficientnet_{variant}_imagenet.h5")


def key(variant: str, size: int, flipped: bool = False) -> str:
    return f"{variant}_{size}" + ("_flip" if flipped else "")


def parse_configs(text: str | None) -> list[tuple[str, int]]:
    if not text:
        return list(CONFIGS)
    out = []
    for item in text.split(","):
        variant, _, size = item.partition("@")
        out.append((variant, int(size)))
    return out


def cache(args) -> None:
    """Eval products first, then validation, then train in a random order, saved every --save-every batches
    with NaN rows for photos not done yet: an interrupted cache is usable (`table` fits on the random
    subset of train it holds), and a rerun with the same --out resumes it."""
    import tensorflow as tf

    from components.preprocess.transform import resize_image
    from probe_lexical import read_catalog, splits_of
    from trainer.data import decode_images
    from trainer.encoders import EFFICIENTNET_FEATURES, image_encoder

    configs = parse_configs(args.configs)
    ids, titles, labels, images = read_catalog(args.catalog, args.label_column, [])
    split = splits_of(ids, args.eval_fraction)
    train = np.random.default_rng(0).permutation(np.flatnonzero(split == features.TRAIN_SPLIT))
    order = np.concatenate([np.flatnonzero(split == features.EVAL_SPLIT),
                            np.flatnonzero(split == features.VALIDATION_SPLIT), train])
    models = {(v, s): image_encoder(weights_file(v), v, s) for v, s in configs}
    runs = [(v, s, False) for v, s in configs] + [(v, s, True) for v, s in configs if args.flip]
    out = {key(*run): np.full((len(ids), EFFICIENTNET_FEATURES), np.nan, np.float32) for run in runs}
    if os.path.exists(args.out):
        with np.load(args.out) as previous:
            if previous["ids"].tolist() == ids and set(out) <= set(previous.files):
                out = {name: previous[name] for name in out}
    done = np.all([np.isfinite(x).all(1) for x in out.values()], 0)
    order = order[~done[order]]
    print(f"[cache] {int(done.sum())} photos already cached, {len(order)} to go", flush=True)
    seconds = dict.fromkeys(out, 0.0)
    started = time.monotonic()

    def save():
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        np.savez(args.out + ".partial.npz", ids=np.array(ids), titles=np.array(titles), labels=np.array(labels),
                 split=split, **out)
        os.replace(args.out + ".partial.npz", args.out)

    for number, start in enumerate(range(0, len(order), args.batch), 1):
        rows = order[start:start + args.batch]
        data = tf.constant([open(images[i], "rb").read() for i in rows])
        pixels = {size: decode_images(resize_image(data, size), size) for size in {s for _, s in configs}}
        for variant, size, flipped in runs:
            x = tf.reverse(pixels[size], axis=[2]) if flipped else pixels[size]
            t = time.monotonic()
            out[key(variant, size, flipped)][rows] = models[(variant, size)](x, training=False).numpy()
            seconds[key(variant, size, flipped)] += time.monotonic() - t
        print(f"[cache] {start + len(rows)}/{len(order)} photos in {time.monotonic() - started:.0f} s", flush=True)
        if number % args.save_every == 0:
            save()
    save()
    print("[cache] forward seconds (wall, this machine's load): "
          + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()), flush=True)


def cost(args) -> None:
    """Milliseconds of one frozen forward pass per product, on one thread (run under taskset -c 0)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from trainer.encoders import image_encoder

    print("| encoder | size | ms CPU per product (1 thread, batch %d) |\n|---|---|---|" % args.batch)
    for variant, size in parse_configs(args.configs):
        model = image_encoder(weights_file(variant), variant, size)
        x = tf.random.uniform([args.batch, size, size, 3], 0, 255, seed=0)
        forward = tf.function(lambda x, m=model: m(x, training=False))
        forward(x)  # trace and warm up
        times = []
        for _ in range(args.repeats):
            t = time.process_time()
            forward(x).numpy()
            times.append((time.process_time() - t) / args.batch)
        print(f"| {variant} | {size} | {1000 * min(times):.1f} |", flush=True)


# --------------------------------------------------------------------------------------------
# table


def _choose(make, cs, x, y, train, val, classes):
    """(C with the best validation top-1, validation log-probs at that C)."""
    best = None
    for c in cs:
        lp = poe.Expert(make, c, _take(x, train), y[train], classes).log_probs(_take(x, val))
        acc = float(np.mean(lp.argmax(1) == y[val]))
        if best is None or acc > best[1]:
            best = (c, acc, lp)
    return best[0], best[2]


def _take(x, rows):
    return [x[i] for i in rows] if isinstance(x, list) else x[rows]


def _read_caches(paths: list[str]) -> tuple[dict, dict]:
    """(ids, titles, labels, split of the first cache; {configuration: features} of all, same products)."""
    first = np.load(paths[0])
    meta = {name: first[name] for name in ("ids", "titles", "labels", "split")}
    images = {}
    for path in paths:
        z = np.load(path)
        if z["ids"].tolist() != meta["ids"].tolist():
            raise SystemExit(f"probe_image: {path} does not hold {paths[0]}'s products in its order")
        images.update({name: z[name] for name in z.files if name not in meta})
    return meta, images


def table(args) -> None:
    meta, images = _read_caches(args.cache)
    names = sorted(set(meta["labels"].tolist()))
    y = np.searchsorted(names, meta["labels"])
    k = len(names)
    split = meta["split"]
    titles = meta["titles"].tolist()
    if args.extra_text_columns:
        from probe_lexical import read_catalog

        ids, titles, _, _ = read_catalog(args.catalog, args.label_column, args.extra_text_columns.split(","))
        if list(ids) != meta["ids"].tolist():
            raise SystemExit(f"probe_image: {args.catalog} does not hold the cache's products in its order")
    # A cache still being written holds NaN rows: image experts fit on the train products every
    # configuration has; validation and eval must be complete.
    done = np.all([np.isfinite(x).all(1) for x in images.values()], 0)
    rows = {s: np.flatnonzero(split == s) for s in (features.TRAIN_SPLIT, features.VALIDATION_SPLIT,
                                                   features.EVAL_SPLIT)}
    for s in (features.VALIDATION_SPLIT, features.EVAL_SPLIT):
        if not args.cv and not done[rows[s]].all():
            raise SystemExit(f"probe_image: the caches lack image features of {(~done[rows[s]]).sum()} {s} products")
    train, val, ev = rows[features.TRAIN_SPLIT], rows[features.VALIDATION_SPLIT], rows[features.EVAL_SPLIT]
    image_train = train[done[train]]
    started = time.monotonic()

    def expert(make, cs, x, fit_rows):
        """(chosen C, validation log-probs (fit on fit_rows), eval log-probs (fit on them + validation))."""
        c, val_lp = _choose(make, cs, x, y, fit_rows, val, k)
        fit_all = np.concatenate([fit_rows, val])
        ev_lp = poe.Expert(make, c, _take(x, fit_all), y[fit_all], k).log_probs(_take(x, ev))
        print(f"[table] expert C={c:g} in {time.monotonic() - started:.0f} s", flush=True)
        return c, val_lp, ev_lp

    def acc(lps):
        return tuple(100 * float(np.mean(lp.argmax(1) == truth)) for lp, truth in zip(lps, (y[val], y[ev])))

    if args.lexical_cache and os.path.exists(args.lexical_cache):
        with np.load(args.lexical_cache) as z:
            lex_c, lex = float(z["c"]), [z["validation"], z["eval"]]
    else:
        lex_c, *lex = expert(poe.text_expert, args.c_lexical or poe.TEXT_CS, titles, train)
        if args.lexical_cache:
            np.savez(args.lexical_cache, c=lex_c, validation=lex[0], eval=lex[1])
    if args.cv:
        _cv_table(args, images, y, k, val, ev, lex, lex_c, done)
        return
    print(f"\n{', '.join(args.cache)}: {k} classes; train {len(train)} (image experts: the {len(image_train)} "
          f"with features), validation {len(val)}, eval {len(ev)}; lexical C={lex_c:g} "
          f"(validation {acc(lex)[0]:.2f}, eval {acc(lex)[1]:.2f})")
    print("\n| image expert | C | image validation | image eval | lexical×image validation | "
          "lexical×image eval |\n|---|---|---|---|---|---|")
    for name in [n for n in images if not n.endswith("_flip")]:
        variants = [(name, images[name])]
        if f"{name}_flip" in images:
            variants.append((f"{name} + mirror (mean)", (images[name] + images[f"{name}_flip"]) / 2))
        for label, x in variants:
            c, *img = expert(poe.image_expert, args.c_image or poe.IMAGE_CS, x, image_train)
            both = [a + b for a, b in zip(lex, img)]
            print(f"| {label} | {c:g} | " + " | ".join(f"{v:.2f}" for v in acc(img) + acc(both)) + " |",
                  flush=True)


def _cv_table(args, images, y, k, val, ev, lex, lex_c, done) -> None:
    """For caches that hold too few train photos: image experts cross-fitted (stratified K folds) over the
    validation and eval products every configuration has, the same folds for every configuration, C the
    best out-of-fold top-1 of the grid. The lexical expert is the train-fitted one (it never sees these
    products' labels except through its own C choice), so lexical × image is scored out of fold too."""
    from sklearn.model_selection import StratifiedKFold

    rows = np.concatenate([val, ev])
    lex_lp = np.concatenate(lex)  # validation rows (fit on train), then eval rows (fit on train + validation)
    keep = done[rows]
    rows, lex_lp = rows[keep], lex_lp[keep]
    counts = np.bincount(y[rows], minlength=k)
    folds = StratifiedKFold(args.cv, shuffle=True, random_state=0)
    # Classes with fewer products than folds cannot be stratified: they join the folds at random.
    strata = np.where(counts[y[rows]] >= args.cv, y[rows], -1)
    splits = list(folds.split(rows, strata))
    print(f"\ncross-fitted image experts ({args.cv} folds) on the {len(rows)} validation and eval products; "
          f"lexical C={lex_c:g} fitted on train: top-1 {100 * np.mean(lex_lp.argmax(1) == y[rows]):.2f}")
    print("\n| image expert | C | image top-1 (out of fold) | lexical×image top-1 |\n|---|---|---|---|")
    for name in [n for n in images if not n.endswith("_flip")]:
        variants = [(name, images[name])]
        if f"{name}_flip" in images:
            variants.append((f"{name} + mirror (mean)", (images[name] + images[f"{name}_flip"]) / 2))
        for label, x in variants:
            best = None
            for c in args.c_image or poe.IMAGE_CS:
                oof = np.zeros((len(rows), k))
                for fit, score in splits:
                    oof[score] = poe.Expert(poe.image_expert, c, x[rows[fit]], y[rows[fit]], k).log_probs(x[rows[score]])
                figure = np.mean(oof.argmax(1) == y[rows])
                if best is None or figure > best[1]:
                    best = (c, figure, oof)
            c, figure, oof = best
            both = np.mean((lex_lp + oof).argmax(1) == y[rows])
            print(f"| {label} | {c:g} | {100 * figure:.2f} | {100 * both:.2f} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="pooled features of every configuration, photo and mirror")
    c.add_argument("--catalog", required=True)
    c.add_argument("--label-column", required=True)
    c.add_argument("--eval-fraction", type=float, default=features.DEFAULT_EVAL_FRACTION)
    c.add_argument("--configs", help="variant@size,… (default: %s)" % ",".join(f"{v}@{s}" for v, s in CONFIGS))
    c.add_argument("--flip", action="store_true", help="also the features of each photo's mirror image")
    c.add_argument("--batch", type=int, default=32)
    c.add_argument("--save-every", type=int, default=10, help="batches between saves of the partial cache")
    c.add_argument("--out", required=True)
    t = sub.add_parser("table", help="image alone and lexical × image, validation and eval, per configuration")
    t.add_argument("--cache", required=True, nargs="+", help="caches of the same catalog")
    t.add_argument("--catalog", help="the cache's catalog (needed with --extra-text-columns)")
    t.add_argument("--label-column")
    t.add_argument("--extra-text-columns", default="")
    t.add_argument("--cv", type=int, default=0,
                   help="cross-fit the image experts in this many folds over validation + eval (a cache with too "
                        "few train photos)")
    t.add_argument("--lexical-cache", help="an .npz keeping the lexical expert's scores between runs (same text)")
    t.add_argument("--c-lexical", type=float, nargs="+")
    t.add_argument("--c-image", type=float, nargs="+")
    o = sub.add_parser("cost", help="ms CPU per product of each encoder's forward pass, one thread")
    o.add_argument("--configs")
    o.add_argument("--batch", type=int, default=16)
    o.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    {"cache": cache, "table": table, "cost": cost}[args.command](args)


if __name__ == "__main__":
    main()
