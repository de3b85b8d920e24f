"""What a training run trains: its configuration, the stages of a fusion, and the specification of
one model's training (trainer/train.py has the whole story)."""
from __future__ import annotations

import dataclasses
import typing

import tf_keras as keras

from common import features
from trainer import recipe
from trainer.model import FROZEN, FULL, TUNES
from trainer.recipe import Recipe

STAGES_DIR = "stages"
FEATURE_CACHE_DIR = "feature_cache"
STREAMS_DIR = "stream_features"
PROBABILITIES_DIR = "probabilities"
# The form of a decision network: a head on the unimodal models' probabilities (their records).
PROBABILITIES_FORM = "probabilities"
CROSSFIT, IN_SAMPLE = "crossfit", "in_sample"
DECISION_TRAININGS = (CROSSFIT, IN_SAMPLE)
EVAL_BATCH_SIZE = 256


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    text_recipe: Recipe = recipe.PAPER_TEXT
    image_recipe: Recipe = recipe.PAPER_IMAGE
    fusion_recipe: Recipe = recipe.PAPER_FUSION
    tune: str = FULL
    # A head from scratch on fixed inputs: every stage of tune "frozen", the first phase of "top",
    # and the decision-level heads (on class probabilities) in every tune.
    head_recipe: Recipe = recipe.HEAD
    # Of the train split, by a hash of the id; 0: no validation split (no early stopping, no calibration).
    validation_fraction: float = 0.125
    # Early stopping on validation top-1 after this many epochs without progress (0: every epoch trains).
    patience: int = 0
    decision_training: str = CROSSFIT
    crossfit_folds: int = 3
    # Feature-level fusions start from the streams of the trained unimodal models (open in the
    # paper): the text stream then begins where the text baseline ended, instead of relearning it
    # at the fusion's small learning rate, and the image stream keeps what its training gave it.
    init_from_unimodal: bool = True
    # float16 compute with float32 variables, when there is a GPU (ignored on CPU).
    mixed_precision: bool = True
    backup_every_steps: int | None = None
    log_every_steps: int = 100
    # Each stage keeps its best (by validation top-1) and its last epoch's checkpoints; False keeps every epoch's.
    prune_checkpoints: bool = True
    # tune frozen / top: "" builds the feature cache in this process; else it is built by the Beam job
    # (trainer/beam_cache.py) with these Beam options, e.g. "--runner=DirectRunner" or Dataflow's.
    feature_cache_beam_args: str = ""
    seed: int = 42

    def __post_init__(self):
        if self.tune not in TUNES:
            raise ValueError(f"tune must be one of {TUNES}, got {self.tune!r}")
        if self.decision_training not in DECISION_TRAININGS:
            raise ValueError(f"decision_training must be one of {DECISION_TRAININGS}, got {self.decision_training!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.crossfit_folds < 2:
            raise ValueError(f"crossfit_folds must be at least 2, got {self.crossfit_folds}")

    def recipe_of(self, stage: str) -> Recipe:
        if self.tune == FROZEN or stage in features.DECISION_FUSIONS:
            return self.head_recipe
        return {features.TEXT_ONLY: self.text_recipe, features.IMAGE_ONLY: self.image_recipe}.get(
            stage, self.fusion_recipe)


def stages_of(fusion_name: str) -> list[str]:
    if fusion_name in features.UNIMODAL_FUSIONS:
        return [fusion_name]
    return [features.TEXT_ONLY, features.IMAGE_ONLY, fusion_name]


@dataclasses.dataclass
class Trained:
    """A trained model in the form it trained in (trainer/model.py), and how its training went."""

    name: str
    form: str  # FULL, TOP or FROZEN (a head on cached features)
    model: keras.Model
    logs: dict

    @property
    def validation_accuracy(self) -> float | None:
        return self.logs.get("best_val_accuracy", self.logs.get("val_accuracy"))


def kept_epochs(logs: dict | None) -> int | None:
    """The epochs an early-stopped model kept (None: it was not early stopped)."""
    return int(logs["best_epoch"]) if logs and logs.get("best_epoch") else None


@dataclasses.dataclass(frozen=True)
class Subset:
    """The train products a model fits on: those `keep` (ids → bool tensor) selects, about `share` of
    the split (for its steps per epoch); all of them by default."""

    keep: typing.Callable | None = None
    share: float = 1.0


@dataclasses.dataclass(frozen=True)
class Fold:
    """A cross-fitted fold's training: its products, and `whole`, the same model trained on the whole
    train split, whose kept epochs the fold repeats without validation."""

    subset: Subset = Subset()
    whole: Trained | None = None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model to train: `name` (its fusion) with `recipe` from `seed`, kept in `stage_dir`."""

    name: str
    recipe: Recipe
    stage_dir: str
    seed: int
    subset: Subset = Subset()


@dataclasses.dataclass(frozen=True)
class FitInputs:
    """A model's own data, for a model not fed by the run's datasets (stream features, probabilities)."""

    dataset: typing.Any
    validation: typing.Any = None
    steps_per_epoch: int | None = None
