"""Training: transformed TFRecords → the paper's stages → serving SavedModels.

Stages (the paper trains the unimodal models first):
    text_only  (text_recipe)   ┐ for every multimodal fusion; decision_level and policy fuse their
    image_only (image_recipe)  ┘ predictions, the feature-level fusions start from them
    <fusion>   (fusion_recipe)   (`init_from_unimodal`)

`tune` says what of the encoders trains (trainer/model.py has the three forms):
    full    end to end, every stage fine-tunes its encoders (the paper's; the GPU setting);
    top     the encoders' lower layers run once per product (trainer/features_cache.py), then each
            stage trains in two phases: its head alone on fixed features (`head_recipe`), then the
            encoders' last blocks together with that head (the stage's recipe) — "linear probe,
            then fine-tune", so a random head never sends large gradients into pretrained blocks.
            A fusion's fixed features for its first phase are those of the tuned unimodal models;
    frozen  the encoders never train: heads only, on cached features (`head_recipe`).
So the stage recipes are the encoders' training (full, top's second phase) and `head_recipe` every
head from scratch: frozen's, top's first phase, and the decision-level heads in every tune.
The decision-level heads (decision_level, policy) train on the unimodal models' class
probabilities: held out by K-fold cross-fitting over the train split (`decision_training`
"crossfit": fold k's probabilities come from unimodal models trained without fold k, for the epochs
their whole-split models kept), so that they see the unimodal models' errors on unseen products, or
in-sample ("in_sample").

A validation split is carved out of the train split by a hash of the id (`validation_fraction`):
early stopping (`patience`) and calibration use it; the eval split is the evaluate stage's alone.

Restartable: each trained model keeps its state under WORK_DIR/stages/<name>/ (trainer/loop.py),
so a job killed mid-epoch and started again with the same command continues where its last backup
was, and finished models are not trained again. Every stage is keyed by its settings and by the
fingerprint of the examples and transform graph: other data in the same work directory is refused.

`Run` is built in layers, one module each: trainer/run_data.py (datasets of every form and split),
trainer/fitting.py (building and fitting a model), trainer/feature_models.py (feature-level models
in each tune), trainer/decision_models.py (cross-fitting and the decision-level heads), and here the
calibration of a trained model; trainer/stages.py holds the configuration and the stages.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
import tf_keras as keras

from common import features
from common.splits import read_split_sizes
from trainer import calibration, export
from trainer.decision_models import DecisionModels
from trainer.loop import writable
from trainer.model import FULL, ModelConfig, build_model, transfer
from trainer.run_data import num_workers
# What a run's users (the benchmark, scripts, tests) import from here besides Run and train.
from trainer.stages import (  # noqa: F401
    CROSSFIT, FEATURE_CACHE_DIR, PROBABILITIES_DIR, STAGES_DIR, TrainConfig, Trained, stages_of,
)

# Temperature scaling reads the logits of held-out products many times (kept on disk meanwhile, n ×
# classes float32): one scalar is pinned by far fewer products than the paper's 150K validation ones.
CALIBRATION_PRODUCTS = 50_000


def multi_worker() -> bool:
    return num_workers() > 1


def distribution_strategy() -> tf.distribute.Strategy:
    """Multi-worker from TF_CONFIG, mirrored over local GPUs, else the default (CPU) strategy."""
    if multi_worker():
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    if gpus:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    return tf.distribute.get_strategy()


def precision_policy(mixed_precision: bool) -> str:
    """Sets Keras's global dtype policy: mixed_float16 only if asked for and a GPU is there (CPUs
    have no fast float16 kernels). Returns the policy's name."""
    name = "mixed_float16" if mixed_precision and tf.config.list_physical_devices("GPU") else "float32"
    keras.mixed_precision.set_global_policy(name)
    return name


class Run(DecisionModels):
    """One training run's data and work directory: the datasets of every form and split, and the
    training and calibration of any model of it (used by `train` and by the benchmark)."""

    def calibrate(self, trained: Trained) -> calibration.Calibration | None:
        """The temperature and review thresholds of a model, fitted on the validation split (None
        without one: the model is then exported uncalibrated)."""
        if not self.validation:
            return None
        # The logits go to a temporary file a batch at a time and the fit reads them back in steps
        # (trainer/calibration.py SpilledLogits): memory is a batch and a step, not products × classes.
        with calibration.SpilledLogits(self.classes) as logits:
            labels = []
            for batch_logits, batch_labels, _ in self.batch_logits(trained, features.VALIDATION_SPLIT):
                take = CALIBRATION_PRODUCTS - len(logits)
                logits.append(batch_logits[:take])
                labels.append(batch_labels[:take])
                if len(logits) >= CALIBRATION_PRODUCTS:
                    break
            if not len(logits):
                return None
            labels = np.concatenate(labels)  # at most CALIBRATION_PRODUCTS int64s
            fitted = calibration.fit(logits, labels)
        self.log(f"[{trained.name}] calibration on {len(labels)} validation products: temperature "
                 f"{fitted.temperature:.3f}, ECE {fitted.validation['ece_before']:.4f} → {fitted.validation['ece_after']:.4f}")
        return fitted


def train_stages(run: Run, fusion_name: str, seed: int) -> dict[str, Trained]:
    """Every stage of `fusion_name` in order; returns {stage: Trained}."""
    config = run.train_config
    trained: dict[str, Trained] = {}
    stage_dir = lambda stage: os.path.join(run.work_dir, STAGES_DIR, stage)  # noqa: E731
    for stage in stages_of(fusion_name):
        if stage in features.DECISION_FUSIONS:
            folds = run.crossfit_unimodal(seed, whole=trained) if config.decision_training == CROSSFIT else None
            trained[stage] = run.train_decision_model(stage, config.recipe_of(stage), stage_dir(stage), seed=seed,
                                                      unimodal=trained, folds=folds)
        else:
            trained[stage] = run.train_feature_model(stage, config.recipe_of(stage), stage_dir(stage), seed=seed,
                                                     unimodal=trained or None)
    return trained


def export_model(run: Run, trained: Trained, export_dir: str, warmup: list) -> None:
    """`trained` (any form) as the full serving SavedModel, calibrated on the validation split."""
    fitted = run.calibrate(trained)
    model = trained.model
    if trained.form != FULL:
        with run.strategy.scope():
            model = build_model(run.model_config.with_fusion(trained.name), run.classes, trainable_encoders=False)
        transfer(trained.model, model)
    export.export_serving_model(
        model, run.tft_output, writable(export_dir), image_size=run.model_config.image_size,
        max_seq_length=run.model_config.max_seq_length, warmup_examples=warmup, calibration=fitted,
        lexical=run.lexical_expert().layer if trained.name in features.EXPERT_FUSIONS else None,
    )


def train(
    *,
    examples_dir: str,
    transform_graph_dir: str,
    export_dir: str,
    work_dir: str,
    model_config: ModelConfig,
    train_config: TrainConfig,
    unimodal_export_dirs: dict[str, str] | None = None,
) -> dict:
    """Trains every stage of `model_config.fusion` and exports the serving SavedModel to `export_dir`
    (and the unimodal models to `unimodal_export_dirs[text_only|image_only]`, when given and
    trained). Returns {stage: last logs}."""
    train_size = read_split_sizes(examples_dir)[features.TRAIN_SPLIT]
    if train_size == 0:
        raise ValueError(f"{examples_dir} has no training examples")
    policy = precision_policy(train_config.mixed_precision)
    strategy = distribution_strategy()
    if train_config.tune != FULL and multi_worker():
        # Cached encoders train in minutes on one machine; one cache writer keeps it simple.
        raise ValueError(f"tune={train_config.tune} trains on one machine: run it without a multi-worker TF_CONFIG")
    print(f"training {model_config.fusion} with {type(strategy).__name__}, {policy} policy, tune {train_config.tune}",
          flush=True)
    run = Run(examples_dir=examples_dir, transform_graph_dir=transform_graph_dir, work_dir=work_dir,
              model_config=model_config, train_config=train_config, strategy=strategy,
              log=lambda line: print(line, flush=True))
    trained = train_stages(run, model_config.fusion, train_config.seed)
    warmup = export.warmup_examples(examples_dir, run.tft_output)
    exports = [(model_config.fusion, export_dir)]
    exports += [(stage, path) for stage, path in (unimodal_export_dirs or {}).items() if stage in trained and path]
    for stage, directory in exports:
        export_model(run, trained[stage], directory, warmup)
        print(f"exported {stage} to {directory}", flush=True)
    return {stage: t.logs for stage, t in trained.items()}

