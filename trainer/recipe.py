"""How each training stage optimises: the paper's recipes as defaults (../shared/HANET.md).

    text model : AdamW, weight decay 0.01, lr 2e-5 (10% linear warm-up, then linear decay), batch 32, 10 epochs
    image model: SGD (momentum 0.9), weight decay 1e-4, lr 0.1 divided by 10 every 30 epochs, batch 512, 90 epochs
    fusion     : AdamW as the text model (the paper: "also AdamW and 32 as pre-training text model")

The schedules and AdamW come from tf-models-official's optimization package and Keras, not by hand.
"""
from __future__ import annotations

import dataclasses

import tf_keras as keras
from official.nlp import optimization

ADAMW = "adamw"
SGD = "sgd"
OPTIMIZERS = (ADAMW, SGD)
# BERT's convention (and create_optimizer's): LayerNorm scales and biases are not decayed.
_NO_DECAY = ["LayerNorm", "layer_norm", "bias"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    optimizer: str = ADAMW
    learning_rate: float = 2e-5
    epochs: int = 10
    batch_size: int = 32
    weight_decay: float = 0.01
    # AdamW: linear warm-up over this fraction of the steps, then linear decay to 0 (BERT's schedule).
    warmup_fraction: float = 0.1
    # SGD: the learning rate is divided by 10 every `decay_epochs` epochs (step decay).
    decay_epochs: int = 30
    momentum: float = 0.9
    # The gradients' global norm is clipped to this (0: no clipping). SGD fine-tuning an ImageNet
    # encoder whose batch-norm layers stay in inference mode can take a first step large enough to
    # wreck it (hm at 96 px, lr 0.005: validation top-1 0.65 → 0.11 in one epoch); clipping bounds it.
    clip_norm: float = 0.0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.clip_norm < 0:
            raise ValueError(f"clip_norm must be 0 (off) or positive, got {self.clip_norm}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be positive, got {self.epochs} and {self.batch_size}")

    def learning_rate_schedule(self, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
        if self.optimizer == SGD:
            # ExponentialDecay with staircase is exactly "divide by 10 every decay_epochs epochs".
            return keras.optimizers.schedules.ExponentialDecay(
                self.learning_rate, decay_steps=self.decay_epochs * steps_per_epoch, decay_rate=0.1, staircase=True
            )
        total_steps = steps_per_epoch * self.epochs
        schedule = keras.optimizers.schedules.PolynomialDecay(self.learning_rate, total_steps, end_learning_rate=0.0)
        warmup_steps = int(self.warmup_fraction * total_steps)
        if warmup_steps:
            schedule = optimization.WarmUp(self.learning_rate, schedule, warmup_steps)
        return schedule

    def make_optimizer(self, steps_per_epoch: int):
        schedule = self.learning_rate_schedule(steps_per_epoch)
        if self.optimizer == SGD:
            return keras.optimizers.SGD(schedule, momentum=self.momentum, weight_decay=self.weight_decay,
                                        global_clipnorm=self.clip_norm or None)
        return optimization.AdamWeightDecay(
            schedule,
            weight_decay_rate=self.weight_decay,
            beta_1=0.9,
            beta_2=0.999,
            epsilon=1e-6,
            exclude_from_weight_decay=_NO_DECAY,
            global_clipnorm=self.clip_norm or None,
        )


PAPER_TEXT = Recipe()
PAPER_IMAGE = Recipe(SGD, learning_rate=0.1, epochs=90, batch_size=512, weight_decay=1e-4, warmup_fraction=0.0,
                     clip_norm=1.0)
PAPER_FUSION = Recipe()
# A head trained from scratch on fixed features (tune "frozen", and the first phase of "top"): far
# above fine-tuning's 2e-5, as for any freshly initialised layer.
HEAD = Recipe(ADAMW, learning_rate=1e-2, epochs=30, batch_size=32)
