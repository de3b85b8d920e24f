"""Feature-level models (unimodal, concat, keyless, key_based, hanet) in each tune, and the stream
features a fusion's first phase trains on under tune "top"."""
from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf

from common import features
from trainer import features_cache, guard
from trainer.fitting import ModelFitting
from trainer.model import FROZEN, FULL, TOP, copy_weights, fusion_layer, init_from_unimodal, transfer_image, transfer_text
from trainer.recipe import Recipe
from trainer.stages import EVAL_BATCH_SIZE, STREAMS_DIR, FitInputs, Fold, ModelSpec, Trained, kept_epochs


class FeatureModels(ModelFitting):
    """ModelFitting, plus the training of feature-level models in the run's tune."""

    def train_feature_model(self, name: str, stage_recipe: Recipe, stage_dir: str, *, seed: int,
                            unimodal: dict | None = None, head_start: Trained | None = None,
                            fold: Fold = Fold()) -> Trained:
        """A feature-level model in the run's tune mode.

        `unimodal` ({text_only, image_only: Trained}) starts a fusion's streams from theirs;
        `head_start` (tune="top"): an already trained first phase, whose head is used as it is;
        `fold`: a cross-fitted fold's products, and its whole-split model whose kept epochs each phase
        repeats instead of early stopping.
        """
        spec = ModelSpec(name, stage_recipe, stage_dir, seed, fold.subset)
        streams = unimodal if (unimodal and self.train_config.init_from_unimodal
                               and name not in features.UNIMODAL_FUSIONS) else None
        epochs = kept_epochs(fold.whole.logs if fold.whole else None)
        tune = self.train_config.tune
        if tune == TOP:
            head = head_start or self._first_phase(spec, streams, fold)
            return self._top_phase(spec, streams, head, epochs,
                                   keep_start=bool(fold.whole and fold.whole.logs.get(guard.KEPT_START)))
        model = self.new_model(name, tune, seed=seed)
        if tune == FULL and streams:
            init_from_unimodal(model, streams[features.TEXT_ONLY].model, streams[features.IMAGE_ONLY].model)
        return Trained(name, tune, model, self.fit(model, spec, tune, epochs=epochs))

    def _first_phase(self, spec: ModelSpec, streams: dict | None, fold: Fold) -> Trained:
        """Tune "top"'s head alone on fixed features: of the tuned unimodal streams for a fusion."""
        model = self.new_model(spec.name, FROZEN, seed=spec.seed)
        head_spec = dataclasses.replace(spec, recipe=self.train_config.head_recipe,
                                        stage_dir=os.path.join(spec.stage_dir, "head"))
        label = f"{spec.name} head"
        if streams:
            cache = self.stream_features(streams, os.path.join(spec.stage_dir, STREAMS_DIR))
            batch_size = self.train_config.head_recipe.batch_size
            inputs = FitInputs(
                features_cache.make_feature_dataset(cache, features.TRAIN_SPLIT, batch_size, True, repeat=True,
                                                    seed=spec.seed, keep=spec.subset.keep),
                features_cache.make_feature_dataset(cache, features.VALIDATION_SPLIT, EVAL_BATCH_SIZE, False,
                                                    repeat=False) if self.validation else None)
            logs = self.fit(model, head_spec, FROZEN, inputs=inputs, extra={"streams": "unimodal"}, label=label)
        else:
            logs = self.fit(model, head_spec, FROZEN, label=label,
                            epochs=kept_epochs(fold.whole.logs.get("head_phase") if fold.whole else None))
        return Trained(spec.name, FROZEN, model, logs)

    def _top_phase(self, spec: ModelSpec, streams: dict | None, head: Trained, epochs: int | None,
                   keep_start: bool = False) -> Trained:
        """Tune "top"'s second phase: the last blocks of the encoders with the trained head; a phase
        that ends below its start keeps it (trainer/guard.py), and `keep_start` (a cross-fitted fold
        of a model whose fine-tuning did) skips it."""
        model = self.new_model(spec.name, TOP, seed=spec.seed)
        if streams:
            transfer_text(streams[features.TEXT_ONLY].model, model)
            transfer_image(streams[features.IMAGE_ONLY].model, model)
        copy_weights(fusion_layer(head.model), fusion_layer(model))
        if keep_start:
            return Trained(spec.name, TOP, model, {guard.KEPT_START: True, "head_phase": head.logs})
        # The top phase depends on the head it starts from: its validation top-1 (its loss without validation).
        if "best_val_accuracy" in head.logs:
            head_figure = {"head_phase_val_accuracy": head.logs["best_val_accuracy"]}
        else:
            head_figure = {"head_phase_loss": head.logs.get("loss")}
        logs = self.fit(model, dataclasses.replace(spec, stage_dir=os.path.join(spec.stage_dir, "top")), TOP,
                        extra=head_figure, label=f"{spec.name} top", epochs=epochs, keep_better=True)
        return Trained(spec.name, TOP, model, {**logs, "head_phase": head.logs})

    def stream_features(self, streams: dict, cache_dir: str) -> str:
        """f_t of the tuned text model and f_i of the tuned image model on the train and validation
        products, written once as a frozen-form cache (the first phase of a fusion under tune="top")."""
        if tf.io.gfile.exists(os.path.join(cache_dir, features_cache.METADATA_FILE)):
            return cache_dir
        text_top = streams[features.TEXT_ONLY].model.get_layer("text_top")
        image_top = streams[features.IMAGE_ONLY].model.get_layer("image_top")

        @tf.function
        def encode(inputs):
            return {
                features.TEXT_FEATURES_KEY: text_top(inputs[features.TEXT_HIDDEN_KEY], inputs[features.INPUT_MASK_KEY],
                                                     training=False),
                features.IMAGE_FEATURES_KEY: image_top(inputs[features.IMAGE_MAP_KEY], training=False),
            }

        sizes = {}
        splits = [features.TRAIN_SPLIT] + ([features.VALIDATION_SPLIT] if self.validation else [])
        for split in splits:
            batches = self.dataset(TOP, split, EVAL_BATCH_SIZE, shuffle=False, with_ids=True)
            sizes[split] = features_cache.write_frozen_records(
                ((encode(inputs), labels, ids) for inputs, labels, ids in batches), os.path.join(cache_dir, split))
        metadata = {"top": False, "text_dim": self.metadata["text_dim"], "image_dim": self.metadata["image_dim"],
                    "split_sizes": sizes}
        with tf.io.gfile.GFile(os.path.join(cache_dir, features_cache.METADATA_FILE), "w") as f:
            json.dump(metadata, f)
        return cache_dir
