"""Shared fixtures: real data from ../shared, encoders built by the set-up command."""
import contextlib
import dataclasses
import json
import os
import pathlib
import shutil

# tf-keras (Keras 2) must be chosen before the first `import tensorflow`: hub.KerasLayer,
# tf-models-official and TFT's transform layer are Keras 2 objects.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
FASHION_DIR = SHARED_DATA / "fashion-products"
FASHION_CATALOG = FASHION_DIR / "products.csv"
PRETRAINED_DIR = pathlib.Path(os.environ.get("HANET_PRETRAINED_DIR", REPO_ROOT / "pretrained"))


def pytest_configure(config):
    """Each test process's compute thread pools (OpenBLAS, OpenMP, TensorFlow's intra-op) get its share
    of the cores: all of them without xdist, cores / workers in an xdist worker.

    Left alone, every worker sizes them to the whole machine; with more busy threads than cores their
    spin-waits burn what the other worker needed (scikit-learn's LogisticRegression on a few dozen
    products: 28 CPU s with 2 BLAS threads per process at load 7, 3.6 s with 1). The libraries read
    these when they load, and nothing has imported numpy or TensorFlow yet; subprocesses inherit them.
    The xdist controller runs no test and sets none, so that its workers do not inherit its share.
    TensorFlow's inter-op pool is left as it is: an op may block one of its threads while waiting for
    another op, and with one thread that is a hang."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None and getattr(config.option, "numprocesses", None):
        return
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    share = str(max(1, len(os.sched_getaffinity(0)) // workers))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ.setdefault(name, share)


def _require(path: pathlib.Path, what: str) -> pathlib.Path:
    if not path.exists():
        pytest.fail(f"{what} not found at {path}: run scripts/setup_encoders.sh first (see README)")
    return path


@pytest.fixture(scope="session")
def fashion_catalog() -> pathlib.Path:
    return _require(FASHION_CATALOG, "the fashion catalog of ../shared/data")


@pytest.fixture(scope="session")
def tiny_bert_handle() -> pathlib.Path:
    """A small random-init BERT in the TF-Hub encoder format, with the BERT uncased vocabulary."""
    return _require(PRETRAINED_DIR / "bert_tiny", "the tiny TF-Hub BERT encoder")


@pytest.fixture(scope="session")
def bert_vocab_file(tiny_bert_handle) -> pathlib.Path:
    return _require(tiny_bert_handle / "assets" / "vocab.txt", "the BERT uncased WordPiece vocabulary")


def write_fashion_catalog(path: pathlib.Path, keep=lambda rows: rows, extra_rows: list[dict] | None = None) -> pathlib.Path:
    """The fashion catalog's rows that `keep` (rows → rows) picks, images by absolute path, plus extra rows."""
    import csv

    with open(FASHION_CATALOG, newline="") as f:
        rows = keep(list(csv.DictReader(f)))
    for row in rows:
        row["image"] = str(FASHION_DIR / row["image"])
    rows += extra_rows or []
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_small_catalog(path: pathlib.Path, n: int, extra_rows: list[dict] | None = None) -> pathlib.Path:
    """The first n products of the fashion catalog, images by absolute path, plus extra rows."""
    return write_fashion_catalog(path, lambda rows: rows[:n], extra_rows)


def built_once(tmp_path_factory, name: str, build):
    """`build(directory)`'s result (JSON-able), built once per pytest run for all xdist workers.

    The first worker to ask builds it under a file lock, in a folder beside the workers' own
    temporary folders; the others wait and read its result. A failed build leaves no result, so the
    next worker to ask tries again (and fails the same way)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    # A worker's basetemp is a folder of the run's (popen-gw0); without xdist it is the run's own.
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "built-once"
    root.mkdir(exist_ok=True)
    directory, result_file = root / name, root / f"{name}.json"
    with FileLock(str(root / f"{name}.lock")):
        if not result_file.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            result_file.write_text(json.dumps(build(directory)))
    return json.loads(result_file.read_text())


def preprocessed_once(tmp_path_factory, name: str, write_catalog, bert_vocab_file, **stage_args):
    """The real preprocess stage on the catalog `write_catalog(path)` writes, once per pytest run:
    its PreprocessResult. `stage_args`: TransformOptions' fields, and preprocess's eval_fraction."""
    from components.preprocess.catalog import CatalogColumns
    from components.preprocess.job import PreprocessResult, preprocess
    from components.preprocess.transform import TransformOptions

    eval_fraction = {"eval_fraction": stage_args.pop("eval_fraction")} if "eval_fraction" in stage_args else {}

    def build(root):
        result = preprocess(
            catalog=str(write_catalog(root / "catalog.csv")),
            columns=CatalogColumns(label="articleType"),
            options=TransformOptions(vocab_file=str(bert_vocab_file), **stage_args),
            examples_dir=str(root / "examples"),
            transform_graph_dir=str(root / "transform_graph"),
            quarantine_file=str(root / "report" / "quarantine.jsonl"),
            metrics_file=str(root / "report" / "metrics.json"),
            # One process: for a few dozen rows, starting a worker per core costs more than it saves.
            beam_args=["--direct_running_mode=in_memory"],
            **eval_fraction,
        )
        return dataclasses.asdict(result)

    return PreprocessResult(**built_once(tmp_path_factory, name, build))


def catalog_of(preprocessed) -> pathlib.Path:
    """The catalog file a preprocessed_once result was made from."""
    return pathlib.Path(preprocessed.examples_dir).parent / "catalog.csv"


def copy_preprocessed(preprocessed, output_dir: pathlib.Path) -> pathlib.Path:
    """A preprocessed_once run copied into the preprocess command's layout (components/preprocess/job.py
    preprocess_to_dir), where the commands that preprocess look for a finished run and reuse it."""
    from components.preprocess import job

    root = pathlib.Path(preprocessed.examples_dir).parent
    output_dir.mkdir(parents=True)
    shutil.copytree(preprocessed.examples_dir, output_dir / job.EXAMPLES_DIR)
    shutil.copytree(preprocessed.transform_graph_dir, output_dir / job.TRANSFORM_GRAPH_DIR)
    for name in (job.METRICS_FILE, job.QUARANTINE_FILE):
        if (root / "report" / name).exists():  # no quarantine file when no row was bad
            shutil.copy(root / "report" / name, output_dir / name)
    return output_dir


@pytest.fixture(scope="session")
def small_preprocessed(tmp_path_factory, bert_vocab_file):
    """48 real products (and 3 bad rows) through the real preprocess stage, once per test run."""

    def write_catalog(path):
        bad = [
            {"id": "900001", "title": "Ghost Shirt", "image": str(path.parent / "absent.jpg"), "articleType": "Shirts"},
            {"id": "900002", "title": "   ", "image": str(FASHION_DIR / "images" / "15970.jpg"), "articleType": "Shirts"},
        ]
        write_small_catalog(path, 48, bad)
        with open(path) as f:
            first = f.readlines()[1]
        with open(path, "a") as f:
            f.write(first)  # the first product again: a duplicate id
        return path

    return preprocessed_once(tmp_path_factory, "small_preprocessed", write_catalog, bert_vocab_file,
                             max_seq_length=24, image_size=32)


def cache_encoders_config(bert_handle):
    """The encoders of the feature cache's tests (only the encoders' fields matter to a cache), with
    trained image weights: a randomly initialised EfficientNet differs from one process or model build to
    the next, and its outputs (about 1e-6) would pass any absolute tolerance of a comparison."""
    from trainer.model import ModelConfig

    weights = PRETRAINED_DIR / "efficientnet_lite0_imagenet.h5"
    if not weights.exists():
        pytest.fail(f"{weights} not found: run scripts/setup_encoders.sh first (see README)")
    return ModelConfig(bert_handle=str(bert_handle), image_weights=str(weights), image_variant="lite0", image_size=32,
                       max_seq_length=24)


CACHE_VALIDATION_FRACTION = 0.25
CACHE_PRODUCTS_PER_SHARD = 10


def cache_job_args(preprocessed, bert_handle) -> dict:
    """The feature cache tests' job: the top form (which holds the frozen one too) of `preprocessed`, a
    validation split, batches of 8."""
    return dict(examples_dir=preprocessed.examples_dir, transform_graph_dir=preprocessed.transform_graph_dir,
                model_config=cache_encoders_config(bert_handle), top=True,
                validation_fraction=CACHE_VALIDATION_FRACTION, batch_size=8)


@contextlib.contextmanager
def small_cache_shards():
    """Hash shards of CACHE_PRODUCTS_PER_SHARD products while caches are built, so that a small split
    spans several (read by the launchers only: they count the shards)."""
    from trainer import features_cache

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(features_cache, "RECORDS_PER_SHARD", CACHE_PRODUCTS_PER_SHARD)
        yield


def _cache_split_records(cache_dir, split: str, metadata: dict) -> dict:
    """A feature cache split's records in file-name order, parsed in both forms: {key: values over the
    products}."""
    import glob

    import numpy as np
    import tensorflow as tf

    from common import features
    from trainer import features_cache

    files = sorted(glob.glob(os.path.join(cache_dir, split, f"*{features_cache.RECORD_SUFFIX}")))
    spec = features_cache._spec(metadata, features_cache.FROZEN_FORM) | features_cache._spec(
        metadata, features_cache.TOP_FORM) | {"text_length": tf.io.FixedLenFeature([], tf.int64)}
    rows = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    out = {key: [row[key].numpy() for row in rows] for key in spec}
    for key in (features.TEXT_HIDDEN_KEY, features.IMAGE_MAP_KEY):
        out[key] = [np.frombuffer(value, np.float16).astype(np.float32) for value in out[key]]
    return out


def assert_same_cache(got_dir, expected_dir, metadata: dict) -> None:
    """Two top-form feature caches of `metadata`: every split the same files (one per hash shard, none
    empty), the same products in the same order, features equal to float rounding (the encoders saw
    other batches)."""
    import numpy as np

    from common import features

    for split, size in metadata["split_sizes"].items():
        assert size > 0
        assert sorted(os.listdir(os.path.join(got_dir, split))) == sorted(os.listdir(os.path.join(expected_dir, split)))
        got, expected = (_cache_split_records(d, split, metadata) for d in (got_dir, expected_dir))
        assert len(got[features.ID_KEY]) == size
        np.testing.assert_array_equal(got[features.ID_KEY], expected[features.ID_KEY])
        np.testing.assert_array_equal(got[features.LABEL_ID_KEY], expected[features.LABEL_ID_KEY])
        np.testing.assert_array_equal(got["text_length"], expected["text_length"])
        for key in (features.TEXT_FEATURES_KEY, features.IMAGE_FEATURES_KEY):
            np.testing.assert_allclose(np.stack(got[key]), np.stack(expected[key]), rtol=1e-4, atol=1e-5)
        for key in (features.TEXT_HIDDEN_KEY, features.IMAGE_MAP_KEY):  # float16: its rounding, at most
            for mine, theirs in zip(got[key], expected[key], strict=True):
                np.testing.assert_allclose(mine, theirs, rtol=2e-3, atol=2e-3)


def eval_records(preprocessed) -> tuple:
    """A preprocessed run's eval split: the model's transformed inputs, and the label ids."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_transform as tft

    from common import features

    spec = tft.TFTransformOutput(preprocessed.transform_graph_dir).transformed_feature_spec()
    spec = {key: spec[key] for key in (*features.BERT_INPUT_KEYS, features.IMAGE_KEY, features.LABEL_ID_KEY,
                                       features.ID_KEY)}
    files = tf.io.gfile.glob(os.path.join(preprocessed.examples_dir, features.EVAL_SPLIT, "*"))
    parsed = tf.io.parse_example(next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1000))), spec)
    # By product id, whatever order preprocess wrote them in (a feature cache has an order of its own).
    order = np.argsort(parsed.pop(features.ID_KEY).numpy())
    parsed = {key: tf.gather(value, order) for key, value in parsed.items()}
    return parsed, parsed.pop(features.LABEL_ID_KEY).numpy()


# Article types whose titles name them: on their eval products a trained text model is right and an
# untrained one is not, so tests that compare models (the gate, serving several versions) can tell.
DISTINCT_CLASSES = ("Watches", "Sunglasses", "Handbags")
SMALL_MODEL_SEQ_LENGTH = 16
SMALL_MODEL_IMAGE_SIZE = 32  # EfficientNet's smallest input
DISTINCT_EVAL_FRACTION = 0.25


@pytest.fixture(scope="session")
def distinct_preprocessed(tmp_path_factory, bert_vocab_file):
    """20 products of each of DISTINCT_CLASSES through the real preprocess stage (about 15 in eval),
    once per test run."""

    def write_catalog(path):
        return write_fashion_catalog(path, lambda rows: [
            row for label in DISTINCT_CLASSES for row in [r for r in rows if r["articleType"] == label][:20]])

    return preprocessed_once(tmp_path_factory, "distinct_preprocessed", write_catalog, bert_vocab_file,
                             max_seq_length=SMALL_MODEL_SEQ_LENGTH, image_size=SMALL_MODEL_IMAGE_SIZE,
                             eval_fraction=DISTINCT_EVAL_FRACTION)


def train_small_model(preprocessed, export_dir, fusion: str, epochs: int, learning_rate: float, bert_handle) -> str:
    """A model on the tiny BERT and a random-init EfficientNet at 32 px, exported with every serving
    signature (learning_rate 0 leaves it at its random initialisation)."""
    from trainer.fusion import HeadConfig
    from trainer.model import ModelConfig
    from trainer.recipe import Recipe
    from trainer.train import TrainConfig, train

    stage = Recipe(learning_rate=learning_rate, epochs=epochs, batch_size=8)
    train(
        examples_dir=preprocessed.examples_dir,
        transform_graph_dir=preprocessed.transform_graph_dir,
        export_dir=str(export_dir),
        work_dir=str(export_dir) + "-work",
        model_config=ModelConfig(
            fusion=fusion,
            bert_handle=str(bert_handle),
            image_weights=None,
            image_size=SMALL_MODEL_IMAGE_SIZE,
            max_seq_length=SMALL_MODEL_SEQ_LENGTH,
            head=HeadConfig(width=32),
        ),
        train_config=TrainConfig(text_recipe=stage, image_recipe=stage, fusion_recipe=stage, validation_fraction=0.0),
    )
    return str(export_dir)


@pytest.fixture(scope="session")
def text_models(distinct_preprocessed, tiny_bert_handle, tmp_path_factory) -> dict:
    """Two text_only models of distinct_preprocessed: "trained" (8 epochs) and "untrained", built
    once per test run. Tests copy them (push) or read them; none writes into them."""

    def build(root):
        return {
            "trained": train_small_model(distinct_preprocessed, root / "trained", "text_only", 8, 1e-3, tiny_bert_handle),
            "untrained": train_small_model(distinct_preprocessed, root / "untrained", "text_only", 1, 0.0,
                                           tiny_bert_handle),
        }

    return built_once(tmp_path_factory, "text_models", build)


# One work directory of tune "frozen" on distinct_preprocessed for the tests of the feature cache,
# the cross-fitted folds and the expert fusions (test_features_cache, test_experts): one cache, one
# pair of unimodal heads and one set of folds, trained once per run instead of once per file.
FROZEN_VALIDATION_FRACTION = 0.25
FROZEN_FOLDS = 2


def frozen_train_config():
    """frozen_work's TrainConfig: heads only, on cached features, with a validation split and folds."""
    from trainer import recipe
    from trainer.model import FROZEN
    from trainer.train import TrainConfig

    return TrainConfig(head_recipe=recipe.Recipe(learning_rate=1e-2, epochs=3, batch_size=8), tune=FROZEN,
                       validation_fraction=FROZEN_VALIDATION_FRACTION, crossfit_folds=FROZEN_FOLDS,
                       mixed_precision=False)


def frozen_model_config(bert_handle):
    """frozen_work's ModelConfig of policy. hanet_experts trains in the same work dir with other head
    options (key_dim), which the unimodal stages and the folds do not depend on."""
    from trainer import fusion
    from trainer.model import ModelConfig

    return ModelConfig(fusion=fusion.POLICY, bert_handle=str(bert_handle), image_weights=None,
                       image_size=SMALL_MODEL_IMAGE_SIZE, max_seq_length=SMALL_MODEL_SEQ_LENGTH,
                       head=fusion.HeadConfig(width=16))


def experts_model_config(model_config):
    """frozen_work's hanet_experts: the policy's settings with another head."""
    import dataclasses as dc

    from common import features
    from trainer import fusion

    return dc.replace(model_config, fusion=features.HANET_EXPERTS, head=fusion.HeadConfig(width=16, key_dim=8))


@pytest.fixture(scope="session")
def frozen_work(distinct_preprocessed, tiny_bert_handle, tmp_path_factory) -> dict:
    """tune "frozen" on distinct_preprocessed in one work dir, once per run: policy (so text_only,
    image_only, the cross-fitted folds, then policy), exported with text_only; then hanet_experts
    (the lexical expert, then its head) on the same cache, unimodal stages and folds, exported, with
    what its training printed. Read-only: a test that writes into the work dir copies it first.
    {"work": dir, "exports": {stage: dir}, "experts_log": text}"""

    def build(root):
        import contextlib
        import io

        from common import features
        from trainer import fusion
        from trainer.train import train

        model_config, train_config = frozen_model_config(tiny_bert_handle), frozen_train_config()
        paths = {"examples_dir": distinct_preprocessed.examples_dir,
                 "transform_graph_dir": distinct_preprocessed.transform_graph_dir, "work_dir": str(root / "work")}
        exports = {stage: str(root / stage) for stage in (fusion.POLICY, fusion.TEXT_ONLY, features.HANET_EXPERTS)}
        train(export_dir=exports[fusion.POLICY], model_config=model_config, train_config=train_config,
              unimodal_export_dirs={fusion.TEXT_ONLY: exports[fusion.TEXT_ONLY]}, **paths)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            train(export_dir=exports[features.HANET_EXPERTS], model_config=experts_model_config(model_config),
                  train_config=train_config, **paths)
        return {"work": paths["work_dir"], "exports": exports, "experts_log": printed.getvalue()}

    return built_once(tmp_path_factory, "frozen_work", build)


# What makes a test slow: a fixture under it that preprocesses a catalog, trains a model, runs a Beam
# job or a whole system, or runs every documented command (seconds to minutes each). `-m "not slow"`
# leaves these tests out, and those below and those marked slow by hand.
HEAVY_FIXTURES = frozenset({"small_preprocessed", "distinct_preprocessed", "text_models", "frozen_work", "benchmark_run",
                            "cli_run", "transform_output", "helps",
                            "limited"})  # test_serving_pixel_limit: a preprocess run and an export
# Tests slow by their own work, about 3 CPU seconds or more each (measured with scripts/cpu_durations.py):
# a subprocess that imports TensorFlow, a Beam job, a model trained, exported or converted. Named here
# rather than marked in their files, so that the quick subset is defined in one place.
SLOW_TESTS = frozenset({
    "test_baselines.py::test_it_learns_titles_that_name_their_class_at_many_classes",
    "test_batch_pipeline_spec.py::test_the_compiled_command_runs_the_shell_with_the_specs_parameters",
    "test_checkpoints.py::test_a_resumed_run_still_knows_the_best_epoch_of_the_run_it_continues",
    "test_convert_bert.py::test_minilm_matches_numpy_reference",
    "test_convert_bert.py::test_tiny_encoder_fine_tunes",
    "test_convert_efficientnet.py::test_image_encoder_gives_1280_features",
    "test_convert_efficientnet.py::test_stem_matches_numpy_on_torch_weights",
    "test_convert_efficientnet.py::test_watch_photos_are_classified_as_watches",
    "test_dependencies.py::test_importing_a_package_loads_only_what_the_graph_allows",
    "test_docker.py::test_compiled_push_command_runs_in_a_replica_of_the_component_image",
    "test_docker.py::test_kfp_config_of_the_images_names_a_module_that_defines_every_compiled_function",
    "test_docs.py::test_compile_and_submit_commands_compile",
    "test_encoders.py::test_b0_weights_file_in_keras_hosted_layout_is_normalized_right",
    "test_encoders.py::test_image_encoders_output_1280_features",
    "test_evaluation_report.py::test_the_report_embeds_its_four_pictures_as_real_pngs",
    "test_fusion.py::test_a_model_saved_before_one_class_per_fusion_loads_with_equal_outputs",
    "test_fusion.py::test_a_saved_model_reloads_its_fusion_layer_and_outputs",
    "test_lexical.py::test_the_expert_is_scikit_learns_logistic_regression_with_c_chosen_on_validation",
    "test_lexical.py::test_the_expert_serves_from_a_saved_model_with_core_tensorflow_only",
    "test_model.py::test_a_fusion_starts_from_the_encoders_of_the_trained_unimodal_models",
    "test_model.py::test_every_fusion_head_saves_to_a_savedmodel_that_reproduces_it",
    "test_model.py::test_mean_text_pooling_averages_the_token_outputs_of_the_title_only",
    "test_pipeline_params.py::test_the_spec_wires_each_task_to_the_parameters_of_its_shell_and_describes_them",
    "test_preprocess_hostile_rows.py::test_hostile_rows_cost_one_row_each_and_the_job_keeps_every_other_row",
    "test_push.py::test_a_push_killed_midway_never_shows_tf_serving_a_half_version",
    "test_routing.py::test_the_attention_weights_follow_the_informative_stream",
    "test_serving_api.py::test_serve_fails_in_one_line_when_its_port_is_taken",
    "test_tokenizer.py::test_catalog_matches_tensorflow_text",
    "test_tokenizer.py::test_every_assigned_code_point_matches_tensorflow_text",
    "test_tokenizer.py::test_saved_models_run_without_tensorflow_text",
})

# Under xdist (pytest.ini: a file per worker, in collection order) these files are handed out first,
# longest first: the files that train start at once, one per worker, and the short files fill in at
# the end, instead of one worker training alone after the other has finished.
FIRST_FILES = (
    "test_benchmark.py",
    "test_features_cache.py",
    "test_train.py",
    "test_pipeline_local.py",
    "test_batch_predict.py",
    "test_gate.py",
)


def pytest_collection_modifyitems(items):
    for item in items:
        if (HEAVY_FIXTURES & set(getattr(item, "fixturenames", ()))
                or f"{item.path.name}::{getattr(item, 'originalname', item.name)}" in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(FIRST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep their order
