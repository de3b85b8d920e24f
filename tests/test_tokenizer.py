"""The core-TF BertTokenizer against tensorflow_text, in eager, tf.function, TFT and a bare SavedModel.

tensorflow_text is only the reference here: the tokenizer must never need it.
"""
import csv
import json
import os
import subprocess
import sys
import textwrap
import unicodedata

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text as text

from components.preprocess.tokenizer import MAX_BYTES_PER_WORD, BertTokenizer, fold_mapping
from tests.no_tensorflow_text import PRELUDE
from common.features import (
    BERT_INPUT_KEYS,
    INPUT_MASK_KEY,
    INPUT_TYPE_IDS_KEY,
    INPUT_WORD_IDS_KEY,
    TITLE_KEY,
)

SIGNATURE = [tf.TensorSpec([None], tf.string)]

HARD_CASES = {
    # accents, precomposed and combining
    "accents": "Café naïve Ångström Crème brûlée",
    "accents_upper": "CAFÉ NAÏVE ÅNGSTRÖM CRÈME BRÛLÉE",
    "combining_acute": "Cafe\u0301 nai\u0308ve",
    "angstrom_kelvin_signs": "\u212b \u212a 5\u00b5m",
    # CJK: ideographs are split one per token, kana and hangul are not
    "chinese": "中文字",
    "japanese": "日本語テキスト",
    "korean": "한국어",
    "cjk_mixed": "Kurta中文Dress字 mixed",
    # emoji, modifiers, variation selectors, ZWJ sequences
    "emoji": "👗👠",
    "emoji_in_word": "Dress👗Red",
    "zwj_family": "👨\u200d👩\u200d👧\u200d👦 family",
    "zwj_flag": "🏳\ufe0f\u200d🌈",
    "skin_tone": "👍🏽 ok",
    "vs16_heart": "I \u2764\ufe0f it",
    # punctuation
    "punct_run": "!!!---...???",
    "punct_inside": "a!!!b...c",
    "tshirt": "T-Shirt",
    "mens": "Men's",
    "curly_apostrophe": "Women\u2019s Top",
    "units": "32GB/64GB",
    "percent_parens": "(50% off) 5.5\" #1 @home",
    "rupee": "₹1,299 Rs.999",
    "unicode_punct": "«quoted» ¿qué? 「括弧」 — dash…",
    # whitespace and separators
    "tabs_newlines": "Blue\tShirt\nMen  Slim   Fit\r\nEnd",
    "nbsp": "\u00a0Slim\u00a0Fit\u00a0",
    "ideographic_space": "Slim\u3000Fit",
    "em_space": "Slim\u2003Fit",
    "line_separator": "Slim\u2028Fit",
    "vertical_tab_nel": "Slim\x0bFit\x85Now",
    "ogham_space": "Slim\u1680Fit",
    # zero-width, format and control characters
    "zwsp": "Blue\u200bShirt",
    "zwnj_zwj": "Blue\u200cShirt Red\u200dTop",
    "bom": "\ufeffBlue Shirt",
    "soft_hyphen": "Kur\u00adta",
    "bidi": "\u202eRTL\u202c \u2066iso\u2069",
    "arabic_number_sign": "a\u0600b",
    "controls": "a\x00b\x07c\x1bd\x7fe",
    # scripts
    "german": "Straße STRASSE Größe",
    "turkish": "İstanbul ıi TÜRKİYE",
    "greek": "Ελληνικά ΣΊΣΥΦΟΣ ᾳ",
    "arabic": "العربية مَرْحَبًا",
    "devanagari": "हिन्दी फैबइंडिया बीबा क़",
    "devanagari_title": "Fabindia Women हरा Kurta",
    "thai": "ภาษาไทย",
    "cyrillic": "Рубашка МУЖСКАЯ",
    # compatibility characters
    "fullwidth": "ＴＳｈｉｒｔ Ｔ－Ｓｈｉｒｔ １２３",
    "ligatures_symbols": "ﬁne ﬀ Ⅻ ① ™ x² ㎏ ½",
    # the byte limit: > 100 bytes of the normalized word is [UNK]
    "ascii_100": "a" * 100,
    "ascii_101": "a" * 101,
    "ascii_long_words": "abc" * 40 + " fits " + "supercalifragilisticexpialidocious" * 3,
    "cyrillic_100_bytes": "ж" * 50,
    "cyrillic_102_bytes": "ж" * 51,
    "devanagari_99_bytes": "ब" * 33,
    "devanagari_102_bytes": "ब" * 34,
    "hangul_nfd_99_bytes": "한" * 11,  # 3 jamo of 3 bytes each after NFD
    "hangul_nfd_108_bytes": "한" * 12,
    "accented_fits_after_fold": "é" * 60,  # 120 bytes raw, 60 after stripping accents
    "cjk_long_run": "中" * 70,  # split per ideograph, never one long word
    # very long titles (a pasted description): truncated to the token budget, never rejected
    "very_long_title": "Navy-Blue Slim Fit Café Shirt, " * 5000,
    "very_long_unknown_words": ("zzqxjö" * 3 + " ") * 3000,
    "very_long_punct_run": "!!! " * 20000 + "Shirt",
    "very_long_cjk": "中文字" * 20000,
    # no tokens at all
    "empty": "",
    "spaces": "   ",
    "whitespace_only": " \t\n\r ",
    "zero_width_only": "\u200b\u200d\ufeff",
}
INVALID_UTF8_CASES = {"latin1_byte": b"Caf\xe9 Shirt", "truncated_sequence": b"x\xe2\x82 y"}


def _read_vocab_ids(vocab_file):
    with open(vocab_file, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f)}


def _reference(vocab_file, lower_case=True):
    """tensorflow_text.BertTokenizer and its usual packing, as tf_text users write it."""
    init = tf.lookup.TextFileInitializer(
        str(vocab_file), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
    table = tf.lookup.StaticVocabularyTable(init, num_oov_buckets=1)
    tokenizer = text.BertTokenizer(table, lower_case=lower_case, token_out_type=tf.int64)
    vocab = _read_vocab_ids(vocab_file)

    def tokenize(titles, max_seq_length):
        ids = tokenizer.tokenize(titles).merge_dims(-2, -1)
        (ids,) = text.WaterfallTrimmer(max_seq_length - 2).trim([ids])
        ids, type_ids = text.combine_segments([ids], vocab["[CLS]"], vocab["[SEP]"])
        word_ids, mask = text.pad_model_inputs(ids, max_seq_length, pad_value=vocab["[PAD]"])
        type_ids, _ = text.pad_model_inputs(type_ids, max_seq_length)
        return {INPUT_WORD_IDS_KEY: word_ids.numpy(), INPUT_MASK_KEY: mask.numpy(),
                INPUT_TYPE_IDS_KEY: type_ids.numpy()}

    return tokenize


def _numpy(outputs):
    return {k: v.numpy() for k, v in outputs.items()}


def _mismatching_rows(ours, reference):
    rows = np.zeros(len(reference[INPUT_WORD_IDS_KEY]), bool)
    for key in BERT_INPUT_KEYS:
        assert ours[key].shape == reference[key].shape, key
        rows |= (ours[key] != reference[key]).any(axis=1)
    return np.flatnonzero(rows)


def _in_batches(fn, titles, batch_size=512):
    """fn: tf.string [batch] -> dict of numpy arrays; the results concatenated over all batches."""
    parts = [fn(tf.constant(titles[i:i + batch_size])) for i in range(0, len(titles), batch_size)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.fixture(scope="module")
def catalog_titles(fashion_catalog):
    with open(fashion_catalog, newline="", encoding="utf-8") as f:
        titles = [row["title"] for row in csv.DictReader(f)]
    assert len(titles) > 3000
    return titles


@pytest.fixture(scope="module")
def reference(bert_vocab_file):
    return _reference(bert_vocab_file)


@pytest.fixture(scope="module")
def tokenizer64(bert_vocab_file):
    return BertTokenizer(str(bert_vocab_file), max_seq_length=64)


@pytest.fixture(scope="module")
def hard_case_ids(bert_vocab_file, reference):
    """Both tokenizers on all hard cases at once (eager), keyed by case name."""
    names = list(HARD_CASES) + list(INVALID_UTF8_CASES)
    titles = [s.encode("utf-8") for s in HARD_CASES.values()] + list(INVALID_UTF8_CASES.values())
    results = {}
    for max_seq_length in (64, 16):
        ours = _numpy(BertTokenizer(str(bert_vocab_file), max_seq_length)(tf.constant(titles)))
        ref = reference(tf.constant(titles), max_seq_length)
        for i, name in enumerate(names):
            results[name, max_seq_length] = (
                {k: v[i] for k, v in ours.items()}, {k: v[i] for k, v in ref.items()})
    return results


@pytest.mark.parametrize("max_seq_length", [64, 16])
def test_catalog_matches_tensorflow_text(bert_vocab_file, catalog_titles, reference, max_seq_length):
    tokenizer = tf.function(BertTokenizer(str(bert_vocab_file), max_seq_length), input_signature=SIGNATURE)
    ours = _in_batches(lambda t: _numpy(tokenizer(t)), catalog_titles)
    ref = _in_batches(lambda t: reference(t, max_seq_length), catalog_titles)
    bad = _mismatching_rows(ours, ref)
    assert not len(bad), [(catalog_titles[i], ours[INPUT_WORD_IDS_KEY][i], ref[INPUT_WORD_IDS_KEY][i])
                          for i in bad[:5]]
    # The comparison is not vacuous: real word pieces, and truncation at the short length.
    lengths = ours[INPUT_MASK_KEY].sum(axis=1)
    assert (lengths > 2).all()
    assert (ours[INPUT_WORD_IDS_KEY] == _read_vocab_ids(bert_vocab_file)["[UNK]"]).sum() < len(catalog_titles)
    if max_seq_length == 16:
        assert (lengths == 16).sum() > 50  # 82 catalog titles need truncation at 16


@pytest.mark.parametrize("max_seq_length", [64, 16])
@pytest.mark.parametrize("case", list(HARD_CASES) + list(INVALID_UTF8_CASES))
def test_hard_case_matches_tensorflow_text(hard_case_ids, case, max_seq_length):
    ours, ref = hard_case_ids[case, max_seq_length]
    for key in BERT_INPUT_KEYS:
        np.testing.assert_array_equal(ours[key], ref[key], err_msg=f"{case} {key}")


def test_word_length_limit_is_in_bytes_of_the_normalized_word(bert_vocab_file, tokenizer64):
    unk = _read_vocab_ids(bert_vocab_file)["[UNK]"]
    ids = tokenizer64(tf.constant(["a" * MAX_BYTES_PER_WORD, "a" * (MAX_BYTES_PER_WORD + 1),
                                   "ж" * 50, "ж" * 51, "é" * 60]))[INPUT_WORD_IDS_KEY].numpy()
    tokens = [row[1:list(row).index(_read_vocab_ids(bert_vocab_file)["[SEP]"])] for row in ids]
    assert len(tokens[0]) > 1 and unk not in tokens[0]
    assert list(tokens[1]) == [unk]
    assert unk not in tokens[2]  # 50 characters, 100 bytes
    assert list(tokens[3]) == [unk]  # 51 characters, 102 bytes
    assert unk not in tokens[4]  # 120 bytes before accent stripping, 60 after


def test_fold_table_matches_icu_on_every_code_point():
    """The per-code-point table vs tensorflow_text's ICU case_fold + NFD + \\p{Mn} removal.

    Differences are allowed only on code points that Python's Unicode database (not ICU's newer
    one) considers unassigned.
    """
    code_points = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    strings = tf.constant([chr(cp).encode("utf-8") for cp in code_points])
    icu = text.normalize_utf8(text.case_fold_utf8(strings), "NFD")
    icu = tf.strings.regex_replace(icu, r"\p{Mn}", "").numpy()
    table = dict(fold_mapping())
    ours = [table.get(chr(cp), chr(cp)).encode("utf-8") for cp in code_points]
    differing = [cp for cp, a, b in zip(code_points, ours, icu) if a != b]
    assigned = [cp for cp in differing if unicodedata.category(chr(cp)) != "Cn"]
    assert not assigned, [(hex(cp), unicodedata.name(chr(cp), "?")) for cp in assigned[:10]]
    assert len(differing) < 500, len(differing)  # ICU's Unicode is newer, not different


def test_every_assigned_code_point_matches_tensorflow_text(bert_vocab_file, reference):
    """Whole pipeline on every code point Python's Unicode database knows, 16 per title."""
    code_points = [cp for cp in range(0x110000)
                   if not 0xD800 <= cp <= 0xDFFF and unicodedata.category(chr(cp)) != "Cn"]
    titles = [" ".join(map(chr, code_points[i:i + 16])) for i in range(0, len(code_points), 16)]
    tokenizer = tf.function(BertTokenizer(str(bert_vocab_file), 128), input_signature=SIGNATURE)
    ours = _in_batches(lambda t: _numpy(tokenizer(t)), titles, batch_size=4096)
    ref = _in_batches(lambda t: reference(t, 128), titles, batch_size=4096)
    bad = _mismatching_rows(ours, ref)
    assert not len(bad), [titles[i] for i in bad[:5]]


@pytest.mark.xfail(strict=True, reason="Python 3.11's unicodedata is Unicode 14; tensorflow_text's ICU is newer")
def test_characters_newer_than_pythons_unicode_database(bert_vocab_file, tokenizer64, reference):
    # U+1CCD6 OUTLINED LATIN CAPITAL LETTER A (Unicode 16): ICU's NFKC_Casefold makes it "a";
    # for Python it is unassigned, kept as is, and the word is [UNK].
    titles = tf.constant(["\U0001CCD6 shirt"])
    np.testing.assert_array_equal(tokenizer64(titles)[INPUT_WORD_IDS_KEY].numpy(),
                                  reference(titles, 64)[INPUT_WORD_IDS_KEY])


def test_no_vocabulary_piece_holds_a_mark_the_table_cannot_reorder(bert_vocab_file):
    """A per-character table cannot do NFD's canonical reordering; only non-Mn marks survive to
    be ordered, and if no piece contains one, any word holding one is [UNK] in either order."""
    reorderable = {ch for ch in map(chr, range(0x110000)) if not 0xD800 <= ord(ch) <= 0xDFFF
                   and unicodedata.combining(ch) and unicodedata.category(ch) != "Mn"}
    assert len(reorderable) > 10
    assert not reorderable & {ch for token in _read_vocab_ids(bert_vocab_file) for ch in token}


def test_cased_mode_matches_tensorflow_text(bert_vocab_file):
    titles = tf.constant([s.encode("utf-8") for s in HARD_CASES.values()])
    ours = _numpy(BertTokenizer(str(bert_vocab_file), 64, lower_case=False)(titles))
    ref = _reference(bert_vocab_file, lower_case=False)(titles, 64)
    bad = _mismatching_rows(ours, ref)
    assert not len(bad), [list(HARD_CASES)[i] for i in bad]


def test_special_ids_come_from_the_vocabulary(tmp_path):
    vocab = ["they", "##'", "##re", "the", "great", "##est", "[SEP]", "[UNK]", "[CLS]", "x", "[PAD]"]
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    out = BertTokenizer(str(vocab_file), 8)(tf.constant(["greatest they're", "", "zzz"]))
    np.testing.assert_array_equal(out[INPUT_WORD_IDS_KEY].numpy(), [
        [8, 4, 5, 0, 7, 7, 6, 10],  # great ##est they, then "'" and "re": words of their own, unknown
        [8, 6, 10, 10, 10, 10, 10, 10],
        [8, 7, 6, 10, 10, 10, 10, 10],
    ])
    np.testing.assert_array_equal(out[INPUT_MASK_KEY].numpy()[1], [1, 1, 0, 0, 0, 0, 0, 0])
    ref = _reference(vocab_file)(tf.constant(["greatest they're", "", "zzz"]), 8)
    np.testing.assert_array_equal(out[INPUT_WORD_IDS_KEY].numpy(), ref[INPUT_WORD_IDS_KEY])

    vocab_file.write_text("\n".join(v for v in vocab if v != "[CLS]") + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        BertTokenizer(str(vocab_file), 8)


def test_eager_and_tf_function_agree_with_static_shapes(tokenizer64):
    titles = tf.constant([s.encode("utf-8") for s in HARD_CASES.values()])
    eager = _numpy(tokenizer64(titles))
    traced_fn = tf.function(tokenizer64, input_signature=SIGNATURE)
    traced = _numpy(traced_fn(titles))
    for key in BERT_INPUT_KEYS:
        np.testing.assert_array_equal(eager[key], traced[key])
        assert eager[key].dtype == np.int64 and eager[key].shape == (len(HARD_CASES), 64)
    spec = traced_fn.get_concrete_function().structured_outputs
    assert {k: v.shape.as_list() for k, v in spec.items()} == {k: [None, 64] for k in BERT_INPUT_KEYS}
    assert not eager[INPUT_TYPE_IDS_KEY].any()
    # Empty batch: nothing to tokenize is still a well-formed [0, 64] result.
    empty = traced_fn(tf.constant([], tf.string))
    assert all(empty[k].shape == (0, 64) for k in BERT_INPUT_KEYS)


# --- tensorflow-transform and serving ------------------------------------------------------------

TFT_MAX_SEQ_LENGTH = 16
TFT_TITLES = [
    "Turtle Check Men Navy Blue Shirt", HARD_CASES["accents"], HARD_CASES["japanese"],
    HARD_CASES["zwj_family"], HARD_CASES["devanagari_title"], HARD_CASES["fullwidth"],
    HARD_CASES["ascii_101"], HARD_CASES["units"], "",
]


def _run_transform_pipeline(vocab_file, work_dir):
    """AnalyzeAndTransformDataset on the DirectRunner; built and run here, never at import time."""
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    def preprocessing_fn(inputs):
        # Built inside the traced function, as the tokenizer's tables must be.
        return BertTokenizer(vocab_file, TFT_MAX_SEQ_LENGTH)(inputs[TITLE_KEY])

    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(
        {TITLE_KEY: tf.io.FixedLenFeature([], tf.string)}))
    transformed_path = os.path.join(work_dir, "transformed")
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=os.path.join(work_dir, "tmp")):
        raw = pipeline | beam.Create([{TITLE_KEY: t.encode("utf-8")} for t in TFT_TITLES], reshuffle=False)
        (transformed, _), transform_fn = (raw, metadata) | tft_beam.AnalyzeAndTransformDataset(
            preprocessing_fn)
        _ = transform_fn | tft_beam.WriteTransformFn(os.path.join(work_dir, "transform_output"))
        _ = (transformed
             | beam.Map(lambda row: json.dumps({k: np.asarray(v).tolist() for k, v in row.items()}))
             | beam.io.WriteToText(transformed_path, shard_name_template=""))
    with open(transformed_path) as f:
        rows = [json.loads(line) for line in f]
    return os.path.join(work_dir, "transform_output"), rows


@pytest.fixture(scope="module")
def transform_output(bert_vocab_file, tmp_path_factory):
    return _run_transform_pipeline(str(bert_vocab_file), str(tmp_path_factory.mktemp("tft")))


@pytest.fixture(scope="module")
def expected_tft_ids(bert_vocab_file):
    return _numpy(BertTokenizer(str(bert_vocab_file), TFT_MAX_SEQ_LENGTH)(tf.constant(TFT_TITLES)))


def test_transform_graph_round_trip(transform_output, expected_tft_ids, reference):
    import tensorflow_transform as tft

    output_dir, beam_rows = transform_output
    # Beam output order is not guaranteed: compare as sets of rows.
    as_rows = lambda d: sorted(tuple(tuple(d[k][i]) for k in BERT_INPUT_KEYS)  # noqa: E731
                               for i in range(len(TFT_TITLES)))
    assert as_rows({k: [r[k] for r in beam_rows] for k in BERT_INPUT_KEYS}) == as_rows(expected_tft_ids)

    tft_output = tft.TFTransformOutput(output_dir)
    assert tft_output.transformed_feature_spec() == {
        k: tf.io.FixedLenFeature([TFT_MAX_SEQ_LENGTH], tf.int64) for k in BERT_INPUT_KEYS}
    layer = tft_output.transform_features_layer()
    reloaded = _numpy(layer({TITLE_KEY: tf.constant(TFT_TITLES)}))
    ref = reference(tf.constant(TFT_TITLES), TFT_MAX_SEQ_LENGTH)
    for key in BERT_INPUT_KEYS:
        np.testing.assert_array_equal(reloaded[key], expected_tft_ids[key])
        np.testing.assert_array_equal(reloaded[key], ref[key])


_NO_TF_TEXT_SCRIPT = PRELUDE + textwrap.dedent('''
    model_dir, transform_dir, control_dir, titles_json, title_key = sys.argv[1:6]
    titles = json.loads(titles_json)

    # Checked before anything but core TF is imported, so only core ops are registered.
    ops = {d: sorted(op_types(d)) for d in (model_dir, transform_dir, control_dir)}
    unregistered = {d: [op for op in o if op_def_registry.get(op) is None] for d, o in ops.items()}

    serving = tf.saved_model.load(model_dir).signatures["serving_default"]
    served = serving(titles=tf.constant(titles))

    import tensorflow_transform as tft  # tries `import tensorflow_text` and must do without
    transformed = tft.TFTransformOutput(os.path.dirname(transform_dir)).transform_features_layer()(
        {title_key: tf.constant(titles)})
    print(json.dumps({
        "ops": ops,
        "unregistered": unregistered,
        "tensorflow_text_loaded": any(m.startswith("tensorflow_text") for m in sys.modules),
        "served": {k: v.numpy().tolist() for k, v in served.items()},
        "transformed": {k: v.numpy().tolist() for k, v in transformed.items()},
    }))
''')


class _ServingModule(tf.Module):
    def __init__(self, vocab_file, max_seq_length):
        super().__init__()
        self.tokenizer = BertTokenizer(vocab_file, max_seq_length)

    @tf.function(input_signature=SIGNATURE)
    def serve(self, titles):
        return self.tokenizer(titles)


def test_saved_models_run_without_tensorflow_text(bert_vocab_file, transform_output, expected_tft_ids,
                                                  tmp_path):
    model_dir = str(tmp_path / "tokenizer_model")
    module = _ServingModule(str(bert_vocab_file), TFT_MAX_SEQ_LENGTH)
    tf.saved_model.save(module, model_dir, signatures={"serving_default": module.serve})
    del module
    transform_dir = os.path.join(transform_output[0], "transform_fn")
    # Negative control: the same check must flag a tensorflow_text graph.
    control_dir = str(tmp_path / "tensorflow_text_model")
    control = tf.Module()
    control.table = tf.lookup.StaticVocabularyTable(tf.lookup.TextFileInitializer(
        str(bert_vocab_file), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), num_oov_buckets=1)
    control_tokenizer = text.BertTokenizer(control.table, lower_case=True)
    control.serve = tf.function(lambda t: control_tokenizer.tokenize(t).flat_values,
                                input_signature=SIGNATURE)
    tf.saved_model.save(control, control_dir)

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TF_TEXT_SCRIPT, model_dir, transform_dir, control_dir,
         json.dumps(TFT_TITLES), TITLE_KEY], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert not result["tensorflow_text_loaded"]
    unregistered = result["unregistered"]
    assert {"CaseFoldUTF8", "WordpieceTokenizeWithOffsets"} <= set(unregistered.pop(control_dir))
    assert unregistered == {model_dir: [], transform_dir: []}
    for ops in (result["ops"][model_dir], result["ops"][transform_dir]):
        # The graphs really contain the tokenizer (not, say, an empty signature).
        assert {"StaticRegexReplace", "StringNGrams", "LookupTableFindV2"} <= set(ops)
        assert {"StatelessWhile", "While"} & set(ops)
    for key in BERT_INPUT_KEYS:
        np.testing.assert_array_equal(result["served"][key], expected_tft_ids[key])
        np.testing.assert_array_equal(result["transformed"][key], expected_tft_ids[key])
