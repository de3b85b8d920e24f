"""The Beam jobs on Beam's DaskRunner (apache-beam[dask]) against a dask.distributed cluster of two worker
processes, compared with what the shipped jobs write on the DirectRunner: preprocess and batch
prediction (their own steps, in a harness: see below) and the feature cache (trainer/beam_cache.py,
the shipped job itself, which uses none of what the runner gets wrong).

What Beam 2.77's DaskRunner (apache_beam/runners/dask/) gets wrong, each pinned by a test at the end so
that the day Beam fixes it the test fails and the harness can give way to the stage's own step:
- `beam.io.Read` (every BoundedSource: ReadFromText, ReadFromTFRecord, tfxio's TFExampleRecord) is
  translated to nothing, and the job fails building its graph;
- a ParDo's tagged outputs are poured into its main output (`with_outputs`, beam.Partition);
- what a DoFn outputs in finish_bundle is dropped (BatchElements' last batch of every bundle);
- only the last transform of the graph is computed: every other branch, sink or not, silently never runs;
- a side input is recomputed for every bundle that reads it, so TFT's analysis, whose graph-running DoFn
  receives a saved model written to a new temporary directory each time, fails on TFT's assertion.
  Beam's file sinks (WriteToText, WriteToTFRecord) take side inputs the same way; once they were seen to
  finalize an empty file with the shards left in two temporary directories, but not reliably.
Preprocess reads through Read, writes through file sinks, splits through tagged outputs and analyses
with TFT, so it cannot run there as it is. The rest of it can: the harness below runs the stage's own
DoFns (reading the catalog, the text checks, one row per id, the photo checks, the split, the raw
tf.Example) and TFT's transform of both splits with the DirectRunner's transform graph, each pipeline
ending in one terminal step that writes its bundles itself, and the tests compare raw and transformed
examples and the quarantine with the stage's. The analysis stays on the DirectRunner.
Batch prediction (components/batch_predict/job.py) reads the catalog the same way, splits through
tagged outputs, batches with RunInference's BatchElements and writes through three file sinks (of
which only the last would run): its harness runs its DoFns and RunInference over its model handler on
batches made after a grouping, one terminal step writing the records, the quarantine and the keys the
job counts, and compares them with the job's.
"""
from __future__ import annotations

import glob
import json
import os
import pickle
import uuid

import pytest

from tests.conftest import REPO_ROOT, assert_same_cache, cache_job_args, catalog_of, small_cache_shards

distributed = pytest.importorskip("distributed", reason="apache-beam[dask] is not installed (requirements.txt)")

# A cluster of two worker processes, each importing TensorFlow: a whole-system run.
pytestmark = pytest.mark.slow

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

# Beam knows the DaskRunner only by its qualified name.
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
LABEL_COLUMN = "articleType"


@pytest.fixture(scope="module")
def dask_cluster():
    """Two worker processes of one thread on 127.0.0.1; they import the project as the DirectRunner's do."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), saved["PYTHONPATH"]]))
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    try:
        with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster:
            yield cluster
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def dask_options(cluster) -> PipelineOptions:
    return PipelineOptions([f"--runner={DASK_RUNNER}", f"--dask_client_address={cluster.scheduler_address}"])


class WriteBundles(beam.DoFn):
    """The terminal step: each bundle (a Dask partition) pickled to its own file in `directory`."""

    def __init__(self, directory: str):
        self._directory = directory

    def start_bundle(self):
        self._items = []

    def process(self, item):
        self._items.append(item)

    def finish_bundle(self):
        if self._items:
            with open(os.path.join(self._directory, f"{uuid.uuid4().hex}.pickle"), "wb") as f:
                pickle.dump(self._items, f)


def read_bundles(directory: str) -> list:
    items = []
    for path in glob.glob(os.path.join(directory, "*.pickle")):
        with open(path, "rb") as f:
            items += pickle.load(f)
    return items


class TagsAsKeys(beam.DoFn):
    """Runs a multi-output DoFn of the stage with every output as (tag, value), `MAIN` for the main one:
    the DaskRunner pours a ParDo's tagged outputs into its main output (see the test below)."""

    MAIN = "main"

    def __init__(self, fn: beam.DoFn):
        self._fn = fn

    def process(self, element):
        for output in self._fn.process(element):
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield output.tag, output.value
            else:
                yield self.MAIN, output


def tagged(pcoll, tag: str, label: str):
    return pcoll | f"{label}Only" >> beam.Filter(lambda kv: kv[0] == tag) | f"{label}Value" >> beam.Values()


def raw_coder():
    import tensorflow_transform as tft
    from tensorflow_transform.tf_metadata import schema_utils

    from components.preprocess.transform import RAW_FEATURE_SPEC

    return tft.coders.ExampleProtoCoder(schema_utils.schema_from_feature_spec(RAW_FEATURE_SPEC))


def raw_tfxio():
    """The raw examples' TFXIO, for the tensor adapter config TFT reads their RecordBatches with."""
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio

    from components.preprocess.transform import RAW_FEATURE_SPEC

    return tfxio.TFExampleBeamRecord(physical_format="tfrecord", schema=schema_utils.schema_from_feature_spec(RAW_FEATURE_SPEC))


def unique_rows(pipeline, catalog, columns):
    """UniqueRows' steps with its own DoFns, each multi-output one under TagsAsKeys: (every row read, the
    text checks' (tag, value), the first of each id's (tag, value))."""
    from apache_beam.io import fileio

    from components.preprocess.catalog_rows import _CheckText, _KeepFirstOfEachId, _rows_of

    rows = (
        pipeline
        | "Catalog" >> beam.Create([catalog])
        | "Match" >> fileio.MatchAll()
        | "Open" >> fileio.ReadMatches()
        | "Rows" >> beam.FlatMap(_rows_of)
    )
    checked = rows | "CheckText" >> beam.ParDo(TagsAsKeys(_CheckText(columns)))
    unique = (
        tagged(checked, TagsAsKeys.MAIN, "Valid")
        | "GroupById" >> beam.GroupByKey()
        | "KeepFirst" >> beam.ParDo(TagsAsKeys(_KeepFirstOfEachId(columns)))
    )
    return rows, checked, unique


def build_validate(pipeline, *, catalog, columns, eval_fraction, out_dir):
    """The stage's first pipeline (UniqueRows, the photo checks, the split), catalog to one WriteBundles
    of ("raw", split, serialized raw tf.Example) and ("quarantine", json). Each multi-output DoFn runs
    under TagsAsKeys and a Filter per split stands for beam.Partition (a multi-output ParDo too), so
    UniqueRows' steps are spelled out (unique_rows), with its own DoFns."""
    from components.preprocess import row_checks
    from components.preprocess.catalog_rows import QUARANTINE_TAG
    from components.preprocess.job import _ToProduct, split_of

    coder = raw_coder()
    _, checked, unique = unique_rows(pipeline, catalog, columns)
    products = (
        tagged(unique, TagsAsKeys.MAIN, "First")
        | "Spread" >> beam.Reshuffle()
        | "ReadImages" >> beam.ParDo(TagsAsKeys(_ToProduct(columns, row_checks.DEFAULT_MAX_IMAGE_PIXELS)))
    )
    quarantined = (
        tuple(tagged(p, QUARANTINE_TAG, f"Rejected{i}") for i, p in enumerate((checked, unique, products)))
        | "AllQuarantined" >> beam.Flatten()
        | "QuarantineJson" >> beam.Map(lambda q: ("quarantine", row_checks.Quarantined.to_json(q)))
    )
    raw = (
        tagged(products, TagsAsKeys.MAIN, "Product")
        | "RawExample" >> beam.Map(lambda p: ("raw", split_of(p.id, eval_fraction), coder.encode(p.as_raw_example())))
    )
    _ = (quarantined, raw) | "AllOutputs" >> beam.Flatten() | "WriteBundles" >> beam.ParDo(WriteBundles(out_dir))


class _DecodeRawBatch(beam.DoFn):
    """A list of serialized raw tf.Examples → one Arrow RecordBatch, as tfxio's BeamSource decodes: its
    BatchElements emits a bundle's last batch in finish_bundle, whose outputs the DaskRunner drops."""

    def setup(self):
        from tensorflow_transform.tf_metadata import schema_utils
        from tfx_bsl.coders import example_coder

        from components.preprocess.transform import RAW_FEATURE_SPEC

        schema = schema_utils.schema_from_feature_spec(RAW_FEATURE_SPEC)
        self._decoder = example_coder.ExamplesToRecordBatchDecoder(schema.SerializeToString())

    def process(self, records):
        if records:
            yield self._decoder.DecodeBatch(records)


def raw_split(pipeline, validated_dir: str, split: str):
    """A split's raw examples from validation's bundle files, one RecordBatch per file."""
    from apache_beam.io import fileio

    return (
        pipeline
        | f"Raw{split}Files" >> beam.Create([os.path.join(validated_dir, "*.pickle")])
        | f"Raw{split}Match" >> fileio.MatchAll()
        | f"Raw{split}Open" >> fileio.ReadMatches()
        | f"Raw{split}Records" >> beam.Map(
            lambda f: [item[2] for item in pickle.loads(f.read()) if item[:2] == ("raw", split)]
        )
        | f"Decode{split}" >> beam.ParDo(_DecodeRawBatch())
    )


def build_transform(pipeline, *, validated_dir, transform_graph_dir, temp_dir, out_dir):
    """The stage's transform of both splits with the written graph, to one WriteBundles of
    ("example", split, serialized transformed tf.Example)."""
    import tensorflow_transform.beam as tft_beam
    from tfx_bsl.public import tfxio

    from components.preprocess.job import SPLITS

    encoder = tfxio.RecordBatchToExamplesEncoder()
    outputs = []
    with tft_beam.Context(temp_dir=temp_dir):
        transform_fn = pipeline | "ReadTransformGraph" >> tft_beam.ReadTransformFn(transform_graph_dir)
        for split in SPLITS:
            transformed, _ = (
                (raw_split(pipeline, validated_dir, split), raw_tfxio().TensorAdapterConfig()),
                transform_fn,
            ) | f"Transform{split}" >> tft_beam.TransformDataset(output_record_batches=True)
            outputs.append(
                transformed
                | f"Encode{split}" >> beam.FlatMapTuple(lambda batch, _: encoder.encode(batch))
                | f"Key{split}" >> beam.Map(lambda record, split=split: ("example", split, record))
            )
    _ = tuple(outputs) | "AllOutputs" >> beam.Flatten() | "WriteBundles" >> beam.ParDo(WriteBundles(out_dir))


@pytest.fixture(scope="module")
def on_direct_runner(small_preprocessed):
    """The shipped stage on the DirectRunner, the reference: conftest's small catalog (real products, a
    missing photo, a blank title and a repeated id), preprocessed once per test run."""
    return small_preprocessed


@pytest.fixture(scope="module")
def catalog(on_direct_runner):
    return str(catalog_of(on_direct_runner))


@pytest.fixture(scope="module")
def on_dask_runner(dask_cluster, catalog, on_direct_runner, tmp_path_factory):
    """The stage's steps on the DaskRunner but the analysis (see test_tft_analysis_fails_on_dask): the items
    the terminal steps wrote, validation's and the transform's with the DirectRunner's graph."""
    from components.preprocess.catalog import CatalogColumns
    from components.preprocess.job import DEFAULT_EVAL_FRACTION

    root = tmp_path_factory.mktemp("dask")
    validated, examples = root / "validated", root / "examples"
    validated.mkdir()
    examples.mkdir()
    with beam.Pipeline(options=dask_options(dask_cluster)) as pipeline:
        build_validate(
            pipeline,
            catalog=catalog,
            columns=CatalogColumns(label=LABEL_COLUMN),
            eval_fraction=DEFAULT_EVAL_FRACTION,
            out_dir=str(validated),
        )
    with beam.Pipeline(options=dask_options(dask_cluster)) as pipeline:
        build_transform(
            pipeline,
            validated_dir=str(validated),
            transform_graph_dir=on_direct_runner.transform_graph_dir,
            temp_dir=str(root / "tft"),
            out_dir=str(examples),
        )
    return read_bundles(str(validated)) + read_bundles(str(examples))


def examples_by_id(records) -> dict:
    import tensorflow as tf

    from common import features

    examples = {}
    for record in records:
        example = tf.train.Example.FromString(record)
        product_id = example.features.feature[features.ID_KEY].bytes_list.value[0].decode()
        assert product_id not in examples, f"product {product_id} written twice"
        examples[product_id] = example
    return examples


def direct_examples(pattern: str) -> dict:
    """The GZIP TFRecords of tf.Example the stage wrote under `pattern`, by product id."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(pattern))
    return examples_by_id(r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def test_transformed_examples_are_the_direct_runners(on_direct_runner, on_dask_runner):
    from components.preprocess.job import SPLITS, split_file_pattern

    items = on_dask_runner
    for split in SPLITS:
        expected = direct_examples(split_file_pattern(on_direct_runner.examples_dir, split))
        got = examples_by_id(item[2] for item in items if item[:2] == ("example", split))
        assert expected, f"the DirectRunner wrote no {split} example: the comparison would prove nothing"
        assert sorted(got) == sorted(expected), split
        different = [i for i in expected if got[i] != expected[i]]
        assert different == [], f"{split}: transformed differently on Dask: {different}"


def test_raw_examples_are_the_direct_runners(on_direct_runner, on_dask_runner):
    """Validation on Dask: the eval split's raw examples are the ones the stage keeps, train's as many."""
    from common import features, splits

    items = on_dask_runner
    expected = direct_examples(os.path.join(splits.raw_examples_dir(on_direct_runner.examples_dir), "*"))
    got = examples_by_id(item[2] for item in items if item[:2] == ("raw", features.EVAL_SPLIT))
    assert expected and got == expected
    train = [item for item in items if item[:2] == ("raw", features.TRAIN_SPLIT)]
    assert len(train) == on_direct_runner.metrics["kept"][features.TRAIN_SPLIT] > 0


def test_quarantine_is_the_direct_runners(on_direct_runner, on_dask_runner):
    from components.preprocess import row_checks

    items = on_dask_runner
    with open(on_direct_runner.quarantine_file) as f:
        expected = sorted(f.read().splitlines())
    got = sorted(item[1] for item in items if item[0] == "quarantine")
    assert len(expected) == 3
    assert {json.loads(line)["reason"] for line in expected} >= {row_checks.DUPLICATE_ID, row_checks.MISSING_TITLE}
    assert got == expected


# What Beam 2.77's DaskRunner gets wrong, each on the smallest pipeline that shows it: the day one of
# these fails, Beam has lifted the limitation and the harness above can use the stage's own step.


def run_on_dask(cluster, build) -> None:
    with beam.Pipeline(options=dask_options(cluster)) as pipeline:
        build(pipeline)


def test_dask_runner_pours_tagged_outputs_into_the_main_output(dask_cluster, tmp_path):
    def build(pipeline):
        split = pipeline | beam.Create([1, 2, 3, 4]) | beam.FlatMap(
            lambda x: [x] if x % 2 else [beam.pvalue.TaggedOutput("even", x)]
        ).with_outputs("even", main="odd")
        _ = split.odd | beam.Map(lambda x: getattr(x, "value", x)) | beam.ParDo(WriteBundles(str(tmp_path)))

    run_on_dask(dask_cluster, build)
    assert sorted(read_bundles(str(tmp_path))) == [1, 2, 3, 4]  # the DirectRunner gives [1, 3]


class _EmitsAtBundleEnd(beam.DoFn):
    def process(self, x):
        yield x

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.windowed_value import WindowedValue

        yield WindowedValue("end", 0, [GlobalWindow()])


def test_dask_runner_drops_what_finish_bundle_outputs(dask_cluster, tmp_path):
    run_on_dask(
        dask_cluster, lambda p: p | beam.Create([1]) | beam.ParDo(_EmitsAtBundleEnd()) | beam.ParDo(WriteBundles(str(tmp_path)))
    )
    assert read_bundles(str(tmp_path)) == [1]  # the DirectRunner gives [1, "end"]


def test_beam_read_cannot_run_on_dask(dask_cluster, tmp_path):
    path = tmp_path / "records.txt"
    path.write_text("a\nb\n")
    with pytest.raises(AttributeError, match="NoneType"):
        run_on_dask(dask_cluster, lambda p: p | beam.io.ReadFromText(str(path)) | beam.ParDo(WriteBundles(str(tmp_path))))


def test_only_the_last_sink_runs_on_dask(dask_cluster, tmp_path):
    first, last = tmp_path / "first", tmp_path / "last"
    first.mkdir()
    last.mkdir()

    def build(pipeline):
        items = pipeline | beam.Create([1, 2])
        _ = items | "First" >> beam.ParDo(WriteBundles(str(first)))
        _ = items | "Last" >> beam.ParDo(WriteBundles(str(last)))

    run_on_dask(dask_cluster, build)
    assert (read_bundles(str(first)), sorted(read_bundles(str(last)))) == ([], [1, 2])


def test_tft_analysis_fails_on_dask(dask_cluster, tmp_path):
    """A side input is recomputed for each bundle that reads it, so TFT's saved model (written to a new
    temporary directory each time) reaches its graph-running DoFn under two names, which TFT asserts
    never happens."""
    import tensorflow as tf
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec({"label": tf.io.FixedLenFeature([], tf.string)})
    )

    def build(pipeline):
        with tft_beam.Context(temp_dir=str(tmp_path / "tft"), force_tf_compat_v1=False):
            rows = pipeline | beam.Create([{"label": b"a"}, {"label": b"b"}, {"label": b"a"}])
            transform_fn = (rows, metadata) | tft_beam.AnalyzeDataset(
                lambda inputs: {"id": tft.compute_and_apply_vocabulary(inputs["label"])}
            )
            _ = transform_fn | tft_beam.WriteTransformFn(str(tmp_path / "graph"))

    with pytest.raises(AssertionError):
        run_on_dask(dask_cluster, build)


# ---- The feature cache (trainer/beam_cache.py): the shipped job itself, on both runners ----------


@pytest.fixture(scope="module")
def cache_on_both_runners(dask_cluster, small_preprocessed, tiny_bert_handle, tmp_path_factory):
    """The top-form cache written by the shipped Beam job on the DirectRunner and on the DaskRunner (two
    partitions, each examples file read in two pieces), with shards of 10 products so that a split spans
    several hash shards."""
    from trainer import beam_cache

    root = tmp_path_factory.mktemp("dask_cache")
    common = cache_job_args(small_preprocessed, tiny_bert_handle)
    with small_cache_shards():
        direct = beam_cache.cache_features_beam(cache_dir=str(root / "direct"), temp_dir=str(root / "direct_tmp"),
                                                beam_args=["--direct_num_workers=2"], **common)
        dask = beam_cache.cache_features_beam(
            cache_dir=str(root / "dask"), temp_dir=str(root / "dask_tmp"), pieces_per_file=2,
            beam_args=[f"--runner={DASK_RUNNER}", f"--dask_client_address={dask_cluster.scheduler_address}",
                       "--dask_npartitions=2"], **common)
    return root, direct, dask


def test_the_feature_cache_on_dask_is_the_direct_runners(cache_on_both_runners):
    from common import features

    root, direct, dask = cache_on_both_runners
    assert dask == direct  # the metadata: encoders, data, splits and their sizes, output shapes
    assert set(direct["split_sizes"]) == {features.TRAIN_SPLIT, features.VALIDATION_SPLIT, features.EVAL_SPLIT}
    assert_same_cache(root / "dask", root / "direct", direct)
    assert len(os.listdir(root / "dask" / features.TRAIN_SPLIT)) > 1


# ---- Batch prediction (components/batch_predict/job.py): the job's own steps on Dask ------------


class Batches(beam.DoFn):
    """(bucket, products) → lists of at most `size` products: RunInference's batches, made after a
    grouping because the DaskRunner drops the last batch of each bundle that BatchElements makes."""

    def __init__(self, size: int):
        self._size = size

    def process(self, bucket_products):
        _, products = bucket_products
        products = list(products)
        for start in range(0, len(products), self._size):
            yield products[start:start + self._size]


def build_predict(pipeline, *, catalog, columns, model, top_k, batch_size, out_dir):
    """predict_catalog's steps, catalog to one WriteBundles of ("record", json), ("quarantine", json)
    and ("counted", key): UniqueRows' steps by unique_rows, the photos read by the
    job's _ToModelInput, RunInference over the job's ServingModelHandler on batches made by Batches,
    the records and the keys it counts by the job's _ToRecord. The job's three file sinks are left out
    (only the last step of a graph runs there), and with them its Count of the keys."""
    import zlib

    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

    from components.batch_predict.job import _ToModelInput, _ToRecord
    from components.batch_predict.model import ServingModelHandler
    from components.preprocess import row_checks
    from components.preprocess.catalog_rows import QUARANTINE_TAG

    rows, checked, unique = unique_rows(pipeline, catalog, columns)
    inputs = tagged(unique, TagsAsKeys.MAIN, "First") | "ReadImages" >> beam.ParDo(
        TagsAsKeys(_ToModelInput(columns, row_checks.DEFAULT_MAX_IMAGE_PIXELS, labelled=True)))
    handler = KeyedModelHandler(ServingModelHandler(model, batch_size=batch_size)).with_no_batching()
    predicted = (
        tagged(inputs, TagsAsKeys.MAIN, "Product")
        | "Bucket" >> beam.Map(lambda keyed: (zlib.crc32(keyed[0][0].encode()) % 3, keyed))
        | "GroupByBucket" >> beam.GroupByKey()
        | "Batch" >> beam.ParDo(Batches(batch_size))
        | "Predict" >> RunInference(handler)
        | "Records" >> beam.ParDo(TagsAsKeys(_ToRecord(model, top_k, labelled=True)))
    )
    quarantined = (
        tuple(tagged(p, QUARANTINE_TAG, f"Rejected{i}") for i, p in enumerate((checked, unique, inputs)))
        | "AllQuarantined" >> beam.Flatten()
        | "QuarantineJson" >> beam.Map(lambda q: ("quarantine", row_checks.Quarantined.to_json(q)))
    )
    outputs = (
        tagged(predicted, TagsAsKeys.MAIN, "Record") | "RecordJson" >> beam.Map(lambda r: ("record", json.dumps(r))),
        tagged(predicted, "counted", "Counted") | "KeyCounted" >> beam.Map(lambda key: ("counted", key)),
        rows | "KeyRowsIn" >> beam.Map(lambda _: ("counted", ("rows_in",))),
        quarantined,
    )
    _ = outputs | "AllOutputs" >> beam.Flatten() | "WriteBundles" >> beam.ParDo(WriteBundles(out_dir))


@pytest.fixture(scope="module")
def predictions_on_both_runners(dask_cluster, small_preprocessed, text_models, tmp_path_factory):
    """The shipped job on the DirectRunner and its steps on Dask, over conftest's small catalog (48
    products, a missing photo, a blank title, a repeated id) with the trained text model."""
    from common import features
    from components.batch_predict import job
    from components.batch_predict.model import resolve

    catalog = str(catalog_of(small_preprocessed))
    root = tmp_path_factory.mktemp("dask_predict")
    direct = job.predict_catalog_to_dir(output_dir=str(root / "direct"), catalog=catalog, model_dir=text_models["trained"],
                                        label_column=LABEL_COLUMN, batch_size=8, beam_args=["--direct_num_workers=2"])
    (root / "dask").mkdir()
    with beam.Pipeline(options=dask_options(dask_cluster)) as pipeline:
        build_predict(pipeline, catalog=catalog, columns=job.catalog_columns(LABEL_COLUMN),
                      model=resolve(text_models["trained"]), top_k=features.DEFAULT_TOP_K, batch_size=8,
                      out_dir=str(root / "dask"))
    return direct, read_bundles(str(root / "dask"))


def test_predictions_on_dask_are_the_direct_runners(predictions_on_both_runners):
    from common import features

    direct, items = predictions_on_both_runners
    expected = {}
    for path in sorted(glob.glob(os.path.join(direct.predictions_dir, "part-*"))):
        with open(path) as f:
            expected |= {r[features.ID_KEY]: r for r in map(json.loads, f)}
    got = {}
    for item in items:
        if item[0] == "record":
            record = json.loads(item[1])
            assert record[features.ID_KEY] not in got, f"{record[features.ID_KEY]} predicted twice"
            got[record[features.ID_KEY]] = record
    assert len(expected) == direct.metrics["predicted"] == 48
    assert sorted(got) == sorted(expected)
    for product_id, record in expected.items():
        mine = dict(got[product_id])
        assert mine.pop(features.OUTPUT_SCORES_KEY) == pytest.approx(record.pop(features.OUTPUT_SCORES_KEY), abs=1e-5)
        assert mine == record, product_id  # the classes in order, the label, the model and its version


def test_batch_predictions_quarantine_and_counts_on_dask_are_the_direct_runners(predictions_on_both_runners):
    import collections

    from components.batch_predict.job import evaluate_counts

    direct, items = predictions_on_both_runners
    with open(direct.quarantine_file) as f:
        expected_quarantine = sorted(f.read().splitlines())
    assert len(expected_quarantine) == 3
    assert sorted(item[1] for item in items if item[0] == "quarantine") == expected_quarantine
    counted = collections.Counter(tuple(item[1]) for item in items if item[0] == "counted")
    assert counted[("rows_in",)] == direct.metrics["rows_in"] == 51
    predicted = {key[1]: n for key, n in counted.items() if key[0] == "predicted"}
    assert predicted == direct.metrics["predicted_classes"]
    labelled = collections.Counter({key[1:]: n for key, n in counted.items() if key[0] == "labelled"})
    assert evaluate_counts(labelled, direct.model.label_vocabulary, LABEL_COLUMN) == direct.metrics["evaluation"]
