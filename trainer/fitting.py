"""A run's models: each built from its seed, keyed by what it depends on, and fitted through the one
training loop (trainer/loop.py)."""
from __future__ import annotations

import dataclasses
import os

import tensorflow as tf
import tf_keras as keras

from common import features
from trainer.loop import LoopOptions, StageSpec, fit_stage
from trainer.model import FULL, TOP, build_model, head_model, probability_model, top_model
from trainer.run_data import Reading, RunData
from trainer.stages import EVAL_BATCH_SIZE, PROBABILITIES_FORM, FitInputs, ModelSpec


class ModelFitting(RunData):
    """RunData, plus the building and fitting of any model of the run."""

    def __init__(self, *, strategy: tf.distribute.Strategy | None = None, log=print, **run_data):
        super().__init__(**run_data)
        self.log = log
        self.strategy = strategy or tf.distribute.get_strategy()
        config = self.train_config
        self.loop_options = LoopOptions(strategy=self.strategy, backup_every_steps=config.backup_every_steps,
                                        log_every_steps=config.log_every_steps, log=log,
                                        prune_checkpoints=config.prune_checkpoints)

    def new_model(self, name: str, form: str, *, seed: int) -> keras.Model:
        # The initial weights are part of what a seed fixes, not whatever state earlier work left.
        keras.utils.set_random_seed(seed)
        config = self.model_config.with_fusion(name)
        with self.strategy.scope():
            if form == FULL:
                return build_model(config, self.classes)
            if form == TOP:
                return top_model(config, self.classes, self.metadata["text_dim"], self.metadata["image_map_shape"])
            if form == PROBABILITIES_FORM:
                return probability_model(config, self.classes)
            return head_model(config, self.classes, self.metadata["text_dim"], self.metadata["image_dim"])

    def settings(self, spec: ModelSpec, form: str, extra: dict) -> dict:
        """What a trained model depends on: a stage directory holds the result of one such setting."""
        model = dataclasses.asdict(self.model_config.with_fusion(spec.name))
        if spec.name in features.UNIMODAL_FUSIONS:
            model.pop("head")  # fusions that differ only in head options share their unimodal stages
        if form != TOP:
            model.pop("text_top_blocks"), model.pop("image_top_blocks")
        return {
            "model": model, "form": form, "recipe": dataclasses.asdict(spec.recipe), "seed": spec.seed,
            "validation_fraction": self.train_config.validation_fraction, "patience": self.train_config.patience,
            "data": self.fingerprint, **extra,
        }

    def fit(self, model: keras.Model, spec: ModelSpec, form: str, *, inputs: FitInputs | None = None,
            extra: dict | None = None, label: str | None = None, epochs: int | None = None,
            keep_better: bool = False) -> dict:
        """Trains `model` (of `form`) through the one loop, on the train split (or `inputs`), with
        early stopping on validation; or, given `epochs`, that many epochs of the recipe without
        validation (a cross-fitted fold repeating its whole-split model's, `stages.kept_epochs`)."""
        keras.utils.set_random_seed(spec.seed)
        names = list(model.input) if isinstance(model.input, dict) else None
        inputs = inputs or FitInputs(self.read(form, Reading(
            features.TRAIN_SPLIT, spec.recipe.batch_size, shuffle=True, seed=spec.seed, keep=spec.subset.keep), names))
        validation = inputs.validation
        if epochs is not None:
            validation, extra = None, {**(extra or {}), "epochs_of_whole_split_model": epochs}
        elif validation is None and self.validation:
            validation = self.dataset(form, features.VALIDATION_SPLIT, EVAL_BATCH_SIZE, shuffle=False,
                                      input_names=names)
        stage = StageSpec(
            stage=label or os.path.basename(spec.stage_dir), stage_dir=spec.stage_dir, recipe=spec.recipe,
            steps_per_epoch=inputs.steps_per_epoch or self.steps(spec.recipe.batch_size, spec.subset),
            settings=self.settings(spec, form, extra or {}),
            patience=self.train_config.patience if epochs is None else 0, epochs=epochs, keep_better=keep_better,
        )
        return fit_stage(model, inputs.dataset, stage, validation=validation, options=self.loop_options)
