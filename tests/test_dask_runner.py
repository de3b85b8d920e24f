"""Preprocess on Beam's DaskRunner (apache-beam[dask]) against a dask.distributed cluster of two worker
processes, compared with what the shipped stage writes on the DirectRunner.

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
"""
from __future__ import annotations

import glob
import json
import os
import pickle
import uuid

import pytest

from tests.conftest import REPO_ROOT, catalog_of

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


def build_validate(pipeline, *, catalog, columns, eval_fraction, out_dir):
    """The stage's first pipeline (UniqueRows, the photo checks, the split), catalog to one WriteBundles
    of ("raw", split, serialized raw tf.Example) and ("quarantine", json). Each multi-output DoFn runs
    under TagsAsKeys and a Filter per split stands for beam.Partition (a multi-output ParDo too), so
    UniqueRows' steps are spelled out here, with its own DoFns."""
    from apache_beam.io import fileio

    from components.preprocess import row_checks
    from components.preprocess.catalog_rows import QUARANTINE_TAG, _CheckText, _KeepFirstOfEachId, _rows_of
    from components.preprocess.job import _ToProduct, split_of

    coder = raw_coder()
    checked = (
        pipeline
        | "Catalog" >> beam.Create([catalog])
        | "Match" >> fileio.MatchAll()
        | "Open" >> fileio.ReadMatches()
        | "Rows" >> beam.FlatMap(_rows_of)
        | "CheckText" >> beam.ParDo(TagsAsKeys(_CheckText(columns)))
    )
    unique = (
        tagged(checked, TagsAsKeys.MAIN, "Valid")
        | "GroupById" >> beam.GroupByKey()
        | "KeepFirst" >> beam.ParDo(TagsAsKeys(_KeepFirstOfEachId(columns)))
    )
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
