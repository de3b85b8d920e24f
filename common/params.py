"""Every parameter of the two pipelines, declared once: name, type, production default, run-local's
default, help.

Everything else is derived from these dataclasses: the KFP pipelines' signatures and each task's
arguments (pipeline/wiring.py), run-local's flags (pipeline/cli.py), the `params:` keys of
config/pipeline.yaml and of --param (pipeline/config.py), the parameter descriptions in the compiled
spec. The KFP component shells (pipeline/kfp_components.py) spell their arguments out, because KFP
inlines their source, and tests/test_pipeline_params.py fails on any shell argument that is not
declared here with the same type. A new parameter: one field here, one argument of the shell that
uses it.

Here rather than in pipeline/ so that a stage's own command line can take run-local's defaults
(`python -m components.preprocess`) without importing the pipeline package.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import typing

from common import baselines, features

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The local encoders built by scripts/setup_encoders.sh from registry packages (no hub is reachable).
PRETRAINED_DIR = pathlib.Path(os.environ.get("HANET_PRETRAINED_DIR", REPO_ROOT / "pretrained"))

_SAME = object()  # run-local keeps the production default


def param(default, help: str, *, local=_SAME, required: bool = False):
    """A parameter: `default` is the production value (the paper's settings), `local` run-local's when
    it differs; `required`: the default is no usable value (a run needs one, and the KFP signature gives
    none, so a run on a cluster must be passed one)."""
    metadata = {"help": help, "local": local, "required": required}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class CatalogParams:
    """The parameters both pipelines share: the catalog, and how its rows are read."""

    catalog: str = param(
        "", "the catalog: a CSV, JSON Lines or TFRecord (tf.Example) file, a glob of them, or a URI (gs://...)",
        required=True,
    )
    id_column: str = param(features.DEFAULT_ID_COLUMN, "the catalog column of each product's id")
    title_column: str = param(features.DEFAULT_TITLE_COLUMN, "the catalog column of each product's title")
    image_column: str = param(
        features.DEFAULT_IMAGE_COLUMN,
        "the catalog column of each product's photo: a path or URI, or the encoded image in a tf.Example",
    )
    extra_text_columns: str = param(
        "", "comma-separated columns appended to the title after text_separator (e.g. description,brand)"
    )
    text_separator: str = param(features.DEFAULT_TEXT_SEPARATOR, "put between the title and each extra text column")


@dataclasses.dataclass
class PipelineParams(CatalogParams):
    """The parameters of the training pipeline (hanet-product-classifier)."""

    label_column: str = param("", "the catalog column holding each product's class", required=True)
    serving_base: str = param(
        "", "where blessed models are pushed, as SERVING_BASE/MODEL_NAME/<version>/ (run-local: WORK_DIR/serving)",
        required=True,
    )
    bert_handle: str = param(
        features.PAPER_BERT_HANDLE, "the TF-Hub BERT encoder (URL or folder); its vocabulary tokenizes the titles",
        local=str(PRETRAINED_DIR / "bert_minilm_l6"),
    )
    image_weights: str = param(
        "imagenet", "EfficientNet's weights: imagenet, a .h5 file, or empty for random ones",
        local=str(PRETRAINED_DIR / "efficientnet_lite0_imagenet.h5"),
    )
    image_variant: str = param(
        "b0", "EfficientNet: b0 (the paper's), lite0, lite1 or lite2 (with their --image-weights file from "
        "scripts/setup_encoders.sh; trained at 224, 240 and 260 px)", local="lite0")
    fusion: str = param(
        "hanet", "the model: text_only, image_only, concat, keyless, key_based, hanet, decision_level, policy or "
        "hanet_experts (HANet over the text, image and lexical experts)"
    )
    # The encoders' training (tune full, and top's second phase). run-local's are the `top` settings
    # measured on the fashion catalog (docs/results.md, "run-local's tune").
    epochs: int = param(10, "epochs of the text model and the fusion (AdamW, 10% warm-up)", local=8)
    batch_size: int = param(32, "batch size of the text model and the fusion")
    learning_rate: float = param(2e-5, "peak learning rate of the text model and the fusion", local=3e-4)
    # MiniLM (run-local's encoder) was trained with mean pooling and ships no pooler.
    text_pooling: str = param(
        "pooled", "f_t: BERT's pooled output (the paper's) or the mean of its token outputs", local="mean"
    )
    image_epochs: int = param(90, "epochs of the image model (SGD, momentum 0.9)", local=8)
    image_batch_size: int = param(512, "batch size of the image model", local=32)
    image_learning_rate: float = param(0.1, "learning rate of the image model", local=0.005)
    image_lr_decay_epochs: int = param(30, "the image model's learning rate is divided by 10 every this many epochs",
                                       local=8)
    tune: str = param(
        "full", "what of the encoders trains: full (end to end, the paper's), top (their last blocks, on cached "
        "lower layers) or frozen (heads only, on cached features)", local="top",
    )
    text_top_blocks: int = param(1, "tune top: BERT's last blocks that fine-tune")
    image_top_blocks: int = param(2, "tune top: EfficientNet's last blocks that fine-tune")
    # Heads start from scratch, so they take a far larger learning rate than fine-tuning's.
    head_epochs: int = param(
        30, "epochs of a head from scratch on fixed inputs: tune frozen's models, tune top's first phase, and "
        "the decision-level heads in every tune")
    head_learning_rate: float = param(1e-2, "learning rate of those heads (AdamW)")
    validation_fraction: float = param(
        0.125, "share of the train split held out (by a hash of the id) for early stopping and calibration"
    )
    patience: int = param(0, "early stopping after this many epochs without validation progress (0: off)", local=2)
    init_from_unimodal: bool = param(True, "feature-level fusions start from the unimodal models' trained encoders")
    mixed_precision: bool = param(True, "compute in float16 on GPUs (logits stay float32); no effect on CPUs")
    backup_every_steps: int = param(0, "back up the training state every this many steps (0: at every epoch's end)")
    image_size: int = param(224, "the square image input, in pixels", local=96)
    max_seq_length: int = param(64, "title tokens, [CLS] and [SEP] included", local=32)
    eval_fraction: float = param(features.DEFAULT_EVAL_FRACTION, "share of the products in the eval split")
    label_min_count: int = param(1, "labels seen fewer times in train share the out-of-vocabulary class")
    accuracy_threshold: float = param(
        0.5, "the gate: a model below this top-1 accuracy on the eval split is not pushed", local=0.0
    )
    accuracy_tolerance: float = param(
        0.01, "the gate also refuses a model whose top-1 is more than this below the served model's"
    )
    baseline_max_train_products: int = param(
        baselines.MAX_TRAIN_PRODUCTS, "the evaluate stage fits the tfidf_svm baseline (hashed TF-IDF word and character "
        "n-grams + linear SVM) on the text of at most about this many train products and reports the candidate "
        "beside it on the same eval products, and tfidf_image_poe (TF-IDF × the trainer's cached image features, "
        "a product of experts) beside it where the catalog is small enough (0: no baselines)",
    )
    baseline_tolerance: float = param(
        0.0, "the gate also refuses a model whose top-1 is more than this below the tfidf_svm baseline's "
        "(0: the model must at least match the baseline; 1.0: never refuses, the comparison is only reported)",
        local=1.0,
    )
    keep_versions: int = param(5, "versions kept under SERVING_BASE/MODEL_NAME after a push (0: all)")
    beam_args: list = param([], "preprocess's Beam pipeline options, e.g. --runner=DataflowRunner")
    feature_cache_beam_args: list = param(
        [], "tune frozen and top: the frozen-feature cache is built by a Beam job with these pipeline options, "
        "spread over that runner's workers (empty: in the train task's own process)"
    )
    model_name: str = param(features.MODEL_NAME, "the model's name under the serving base, as TF Serving knows it")

    def as_arguments(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class BatchPredictParams(CatalogParams):
    """The parameters of the batch prediction pipeline (hanet-batch-predict)."""

    model_dir: str = param(
        "", "a pushed version SERVING_BASE/hanet/<n>, a model base SERVING_BASE/hanet (its newest complete "
        "version when the run starts: what TF Serving serves) or a model artifact's URI", required=True,
    )
    label_column: str = param("", "a column of true classes, for top-1, top-5 and macro-F1 (empty: predictions only)")
    top_k: int = param(features.DEFAULT_TOP_K, "classes written per product")
    output_format: str = param(features.JSONL, f"of the prediction files: {' or '.join(features.PREDICTION_FORMATS)}")
    batch_size: int = param(features.DEFAULT_BATCH_SIZE, "products per call of the model")
    max_image_pixels: int = param(
        features.DEFAULT_MAX_IMAGE_PIXELS, "larger images (by their header) are quarantined before decoding"
    )
    beam_args: list = param(
        [], "the job's Beam pipeline options (empty: the DirectRunner in the task's pod, a worker thread per CPU)"
    )

    def as_arguments(self) -> dict:
        return dataclasses.asdict(self)

    def missing(self) -> list[str]:
        return [name for name in required(BatchPredictParams) if not getattr(self, name)]


Params = typing.Union[PipelineParams, BatchPredictParams]


def help_text(cls: type, name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def required(cls: type) -> tuple[str, ...]:
    """The parameters without a usable default: a run needs them from the config or from --param."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["required"])


def types(cls: type) -> dict[str, type]:
    """Each parameter's type (str, int, float, bool, list), as KFP reads it from a signature."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def local_params() -> PipelineParams:
    """run-local's defaults: a few hundred products train in minutes on 2 CPU cores, on the local
    encoders (MiniLM-L6 in the TF-Hub BERT format, EfficientNet-Lite0 ImageNet) and frozen."""
    return PipelineParams(**{
        f.name: f.metadata["local"] for f in dataclasses.fields(PipelineParams) if f.metadata["local"] is not _SAME
    })
