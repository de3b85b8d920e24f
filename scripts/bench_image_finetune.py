"""The image model's fine-tuning at run-local's settings, with and without gradient clipping.

Trains image_only as run-local does (tune top, 96 px, Lite0, SGD at run-local's image rate, early
stopping) once per --clip-norm value on the same preprocessed catalog and prints, per value, the
validation top-1 after the head phase, where the fine-tuning phase ended, and whether the guard
(trainer/guard.py) kept the starting weights. `--max-products` takes a subset of the catalog (the
first N rows) when time is short.

    .venv/bin/python scripts/bench_image_finetune.py --catalog ../shared/data/hm-products/products.csv \
        --label-column product_type --out /tmp/finetune-hm --clip-norm 0,1
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import pathlib
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from common.params import local_params  # noqa: E402


def subset_catalog(catalog: str, out: str, max_products: int) -> str:
    """The first `max_products` rows of a CSV catalog, with image paths made absolute."""
    base = os.path.dirname(os.path.abspath(catalog))
    path = os.path.join(out, "catalog.csv")
    with open(catalog, newline="") as f, open(path, "w", newline="") as g:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(g, reader.fieldnames)
        writer.writeheader()
        for i, row in enumerate(reader):
            if i >= max_products:
                break
            if row.get("image") and not os.path.isabs(row["image"]):
                row["image"] = os.path.join(base, row["image"])
            writer.writerow(row)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--label-column", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--clip-norm", default="0,1", help="comma-separated values; 0: no clipping")
    parser.add_argument("--max-products", type=int, default=0, help="the first N rows only (0: all)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    from components.preprocess.catalog import CatalogColumns
    from components.preprocess.job import preprocess_to_dir
    from common import features
    from trainer import guard, recipe
    from trainer.model import ModelConfig
    from trainer.train import STAGES_DIR, Run, TrainConfig

    p = local_params()
    os.makedirs(args.out, exist_ok=True)
    catalog = subset_catalog(args.catalog, args.out, args.max_products) if args.max_products else args.catalog
    data_dir = os.path.join(args.out, "data")
    if not os.path.exists(os.path.join(data_dir, "done")):
        preprocess_to_dir(catalog=catalog, columns=CatalogColumns(label=args.label_column), output_dir=data_dir,
                          bert_handle=p.bert_handle, max_seq_length=p.max_seq_length, image_size=p.image_size)
        open(os.path.join(data_dir, "done"), "w").close()
    model_config = ModelConfig(fusion=features.IMAGE_ONLY, bert_handle=p.bert_handle, image_weights=p.image_weights,
                               image_variant=p.image_variant, image_size=p.image_size,
                               max_seq_length=p.max_seq_length, text_pooling=p.text_pooling,
                               text_top_blocks=p.text_top_blocks, image_top_blocks=p.image_top_blocks)
    head = dataclasses.replace(recipe.HEAD, learning_rate=p.head_learning_rate, epochs=p.head_epochs,
                               batch_size=p.batch_size)
    rows = []
    for clip in [float(v) for v in args.clip_norm.split(",")]:
        sgd = dataclasses.replace(recipe.PAPER_IMAGE, learning_rate=p.image_learning_rate, epochs=p.image_epochs,
                                  batch_size=p.image_batch_size, decay_epochs=p.image_lr_decay_epochs, clip_norm=clip)
        config = TrainConfig(image_recipe=sgd, tune=p.tune, head_recipe=head, validation_fraction=p.validation_fraction,
                             patience=p.patience, seed=args.seed)
        run = Run(examples_dir=os.path.join(data_dir, "examples"),
                  transform_graph_dir=os.path.join(data_dir, "transform_graph"), work_dir=args.out,
                  model_config=model_config, train_config=config, cache_dir=os.path.join(args.out, "cache"))
        trained = run.train_feature_model(features.IMAGE_ONLY, sgd,
                                          os.path.join(args.out, STAGES_DIR, f"image_only-clip{clip:g}-seed{args.seed}"),
                                          seed=args.seed)
        logs = trained.logs
        row = {"clip_norm": clip, "head_val_top1": logs["head_phase"].get("best_val_accuracy"),
               "finetune_start_val_top1": logs.get(guard.START_ACCURACY),
               "finetune_end_val_top1": logs.get(guard.END_ACCURACY), "kept_start": logs.get(guard.KEPT_START),
               "epochs": logs.get("epochs"), "seconds": round(logs.get("seconds", 0.0))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
