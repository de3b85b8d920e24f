"""The pipeline's parameters, with production defaults and the small local defaults of run-local."""
from __future__ import annotations

import dataclasses
import os
import pathlib

from trainer import features

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PRETRAINED_DIR = pathlib.Path(os.environ.get("HANET_PRETRAINED_DIR", REPO_ROOT / "pretrained"))


@dataclasses.dataclass
class PipelineParams:
    """Exactly the parameters of `hanet_pipeline`; production defaults (the paper's settings)."""

    catalog: str = ""
    label_column: str = ""
    serving_base: str = ""
    bert_handle: str = "https://tfhub.dev/tensorflow/bert_en_uncased_L-12_H-768_A-12/4"
    image_weights: str = "imagenet"
    image_variant: str = "b0"
    fusion: str = "hanet"
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 2e-5
    image_size: int = 224
    max_seq_length: int = 64
    eval_fraction: float = 0.2
    accuracy_threshold: float = 0.5
    beam_args: list = dataclasses.field(default_factory=list)
    model_name: str = features.MODEL_NAME

    def as_arguments(self) -> dict:
        return dataclasses.asdict(self)


def local_params() -> PipelineParams:
    """Defaults of run-local: a few hundred products train in minutes on 2 CPU cores.

    The encoders are the local stand-ins built by scripts/setup_encoders.sh from registry packages
    (no hub is reachable): MiniLM-L6 converted to the TF-Hub BERT format, EfficientNet-Lite0 ImageNet.
    """
    return PipelineParams(
        bert_handle=str(PRETRAINED_DIR / "bert_minilm_l6"),
        image_weights=str(PRETRAINED_DIR / "efficientnet_lite0_imagenet.h5"),
        image_variant="lite0",
        epochs=3,
        batch_size=16,
        learning_rate=1e-4,
        image_size=96,
        max_seq_length=32,
        accuracy_threshold=0.0,
    )
