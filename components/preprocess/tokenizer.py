"""BERT uncased tokenization (title -> BERT encoder inputs) in core TensorFlow ops only.

This runs inside the tensorflow-transform graph and therefore inside every exported serving model.
tensorflow_text would put custom ops (CaseFoldUTF8, NormalizeUTF8, RegexSplitWithOffsets,
WordpieceTokenizeWithOffsets) into that graph, which stock TF Serving cannot load
(tensorflow/serving#2267). This module reproduces
`tensorflow_text.BertTokenizer(vocab, lower_case=True)` + [CLS]/[SEP] packing with ops that every
TensorFlow build registers: tf.strings (RE2 regexes, n-grams), tf.lookup hash tables, ragged
tensors and a tf.while_loop.

Build the tokenizer inside the `preprocessing_fn`: its lookup tables are then created in the traced
graph, where tensorflow-transform looks for table initializers (a tokenizer built outside and
captured fails when TFT writes the transform graph). TFT then logs that tables initialized inside
a tf.function are re-initialized on every call; measured, they are not: a call costs the same as
with tables built once outside.
"""
from __future__ import annotations

import functools
import os
import unicodedata

import tensorflow as tf

from common.features import INPUT_MASK_KEY, INPUT_TYPE_IDS_KEY, INPUT_WORD_IDS_KEY

# tensorflow_text's WordpieceTokenizer default. The unit is BYTES of the (case-folded,
# accent-stripped) UTF-8 word, not characters: the kernel compares `token.size()` of the
# std::string, so a word of 34 three-byte characters (102 bytes) is already [UNK] while a word of
# 100 ASCII letters is still split into word pieces.
MAX_BYTES_PER_WORD = 100
SUFFIX_INDICATOR = "##"
CLS_TOKEN, SEP_TOKEN, PAD_TOKEN, UNK_TOKEN = "[CLS]", "[SEP]", "[PAD]", "[UNK]"

# Same delimiters as tensorflow_text's BasicTokenizer (_DELIM_REGEX): ASCII punctuation and
# \p{P} are split off one character at a time, and so are the CJK ideograph blocks (the original
# BERT's _is_chinese_char ranges; Hiragana, Katakana and Hangul are NOT among them, so those stay
# whole words). Both tokenizers hand the pattern to RE2, so the Unicode tables behind \p{..}
# are the same ones.
_PUNCTUATION = r"[!-/]|[:-@]|[\[-`]|[{-~]|[\p{P}]"
_CJK = (
    r"[\x{4E00}-\x{9FFF}]|[\x{3400}-\x{4DBF}]|[\x{20000}-\x{2A6DF}]|[\x{2A700}-\x{2B73F}]"
    r"|[\x{2B740}-\x{2B81F}]|[\x{2B820}-\x{2CEAF}]|[\x{F900}-\x{FAFF}]|[\x{2F800}-\x{2FA1F}]"
)
# One RE2 pass does two of tensorflow_text's steps: control/format characters become whitespace
# (group 1 does not participate, so " \1 " is just spaces) and every delimiter gets whitespace on
# both sides, so that a plain whitespace split yields exactly the tokens of RegexSplitWithOffsets.
# Merging is safe because \p{Cc}/\p{Cf} and the delimiter classes are disjoint. Splitting on
# whitespace then matches tensorflow_text's `\s+`, because RE2's \s is [\t\n\f\r ] and all of
# those but the space are \p{Cc}, already replaced.
_SPACE_OUT_PATTERN = r"(?:\p{Cc}|\p{Cf})|(" + _PUNCTUATION + "|" + _CJK + ")"
_SPACE_OUT_REWRITE = r" \1 "

# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties.txt). Python's unicodedata has no
# NFKC_Casefold, whose definition removes these; tensorflow_text's ICU normalizer does (e.g. the
# zero-width joiner inside emoji ZWJ sequences, soft hyphens, variation selectors).
_DEFAULT_IGNORABLE_RANGES = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)
_HANGUL_SYLLABLES = range(0xAC00, 0xD7A4)  # decomposed algorithmically, invisible to .decomposition()

# Value the fold table returns for a character it does not hold. Never a real mapping because it
# is not valid UTF-8.
_UNMAPPED = b"\xff"


_DEFAULT_IGNORABLE = frozenset(
    chr(cp) for lo, hi in _DEFAULT_IGNORABLE_RANGES for cp in range(lo, hi + 1)
)


def _is_default_ignorable(ch: str) -> bool:
    return ch in _DEFAULT_IGNORABLE


def _nfkc_casefold(text: str) -> str:
    """NFKC_Casefold of UTS #15/#44: iterate NFKC(casefold(NFKC(x))) minus ignorables to a fixpoint.

    Iteration is needed because a few characters only reach the closure after a second round
    (e.g. compatibility characters whose NFKC form is uppercase).
    """
    text = "".join(ch for ch in text if not _is_default_ignorable(ch))
    while True:
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
        folded = "".join(ch for ch in folded if not _is_default_ignorable(ch))
        if folded == text:
            return text
        text = folded


def _lower_case_and_strip_accents(text: str) -> str:
    """tensorflow_text's BasicTokenizer.lower_case: case_fold_utf8 (ICU NFKC_Casefold), NFD, drop Mn."""
    decomposed = unicodedata.normalize("NFD", _nfkc_casefold(text))
    return "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")


@functools.lru_cache(maxsize=None)
def fold_mapping() -> tuple[tuple[str, str], ...]:
    """Every code point that lower-casing + accent stripping changes, with its replacement.

    The whole-string operation equals this per-code-point mapping applied character by character,
    except for canonical reordering of combining marks that are not \\p{Mn} (only a few Mc musical
    symbols), which a per-character table cannot reorder. Computed once per process (~0.5 s).
    """
    pairs = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:  # surrogates never come out of UTF-8 decoding
            continue
        ch = chr(cp)
        category = unicodedata.category(ch)
        # Fast path: an unassigned code point, or one without (compatibility) decomposition, case
        # folding, mark category or ignorability, maps to itself; this skips ~97% of the code space.
        if ch not in _DEFAULT_IGNORABLE and (
            category == "Cn"
            or (
                category != "Mn"
                and cp not in _HANGUL_SYLLABLES
                and not unicodedata.decomposition(ch)
                and ch.casefold() == ch
            )
        ):
            continue
        folded = _lower_case_and_strip_accents(ch)
        if folded != ch:
            pairs.append((ch, folded))
    return tuple(pairs)


def _read_vocab(vocab_file: str) -> list[str]:
    # tf.io.gfile so that a gs:// vocabulary works from a Kubeflow step as well.
    with tf.io.gfile.GFile(vocab_file, "rb") as f:
        lines = f.read().decode("utf-8").split("\n")
    if lines and lines[-1] == "":  # the trailing newline, not an empty token
        lines.pop()
    return [line.rstrip("\r") for line in lines]


class BertTokenizer(tf.Module):
    """Titles -> {input_word_ids, input_mask, input_type_ids}, each tf.int64 [batch, max_seq_length].

    Token ids equal tensorflow_text.BertTokenizer(vocab, lower_case=True, token_out_type=tf.int64)
    followed by "[CLS] tokens[:max_seq_length - 2] [SEP]" and [PAD] padding.
    """

    def __init__(self, vocab_file: str, max_seq_length: int, lower_case: bool = True):
        super().__init__(name="bert_tokenizer")
        if max_seq_length < 2:
            raise ValueError(f"max_seq_length must leave room for [CLS] and [SEP], got {max_seq_length}")
        self.max_seq_length = int(max_seq_length)
        self.lower_case = bool(lower_case)

        vocab = _read_vocab(str(vocab_file))
        token_to_id: dict[str, int] = {}
        for i, token in enumerate(vocab):
            # A file-backed table fails on a duplicated line; keeping the first id is the
            # WordPiece convention (HF, original BERT) and keeps the table buildable.
            token_to_id.setdefault(token, i)
        missing = [t for t in (CLS_TOKEN, SEP_TOKEN, PAD_TOKEN, UNK_TOKEN) if t not in token_to_id]
        if missing:
            raise ValueError(f"{vocab_file} lacks the special tokens {missing}")
        self.cls_id = token_to_id[CLS_TOKEN]
        self.sep_id = token_to_id[SEP_TOKEN]
        self.pad_id = token_to_id[PAD_TOKEN]
        self.unk_id = token_to_id[UNK_TOKEN]

        # One table keyed by the piece text without "##", whose value packs two ids, each + 1 so
        # that 0 means "no such entry": the id of "text" as the start of a word (high 32 bits) and
        # of "##text" inside a word (low 32 bits). Candidate pieces then need no "##" string
        # concatenation and only one lookup, whichever role they are looked up in.
        packed_ids: dict[str, int] = {}
        for token, i in token_to_id.items():
            if token.startswith(SUFFIX_INDICATOR):
                text, shift = token[len(SUFFIX_INDICATOR):], 0
            else:
                text, shift = token, 32
            packed_ids[text] = packed_ids.get(text, 0) | ((i + 1) << shift)
        # No vocabulary entry is longer than this many characters (suffix indicator excluded), so
        # no longer substring of a word can ever match: the widest n-gram worth looking up.
        self.max_piece_chars = max(len(text) for text in packed_ids)
        # Embedded as constants rather than an asset file: the transform graph and the serving
        # model stay self-contained, with no vocabulary path to ship or rewrite.
        self._vocab_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                keys=tf.constant([t.encode("utf-8") for t in packed_ids], tf.string),
                values=tf.constant(list(packed_ids.values()), tf.int64),
            ),
            default_value=0,
        )
        if self.lower_case:
            pairs = fold_mapping()
            self._fold_table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    keys=tf.constant([k.encode("utf-8") for k, _ in pairs], tf.string),
                    values=tf.constant([v.encode("utf-8") for _, v in pairs], tf.string),
                ),
                default_value=_UNMAPPED,
            )

    def __call__(self, titles: tf.Tensor) -> dict[str, tf.Tensor]:
        """titles: tf.string [batch]. Returns the three BERT inputs, tf.int64 [batch, max_seq_length]."""
        with tf.name_scope("bert_tokenizer"):
            titles = tf.convert_to_tensor(titles, tf.string)
            titles.shape.assert_has_rank(1)
            words = self._basic_tokenize(titles)  # [batch, (words)]
            # Every word yields at least one token (pieces or [UNK]), so words past the token budget
            # never reach the output: dropping them first bounds the WordPiece cost of a very long
            # title (a pasted description, a 1 MB cell) to that of a short one.
            words = words[:, : self.max_seq_length - 2]
            pieces = self._wordpiece(words.flat_values)  # [words, (pieces)]
            tokens = words.with_flat_values(pieces).merge_dims(1, 2)  # [batch, (tokens)]
            return self._pack(tokens)

    def _basic_tokenize(self, titles: tf.Tensor) -> tf.RaggedTensor:
        if self.lower_case:
            titles = self._fold(titles)
        spaced = tf.strings.regex_replace(titles, _SPACE_OUT_PATTERN, _SPACE_OUT_REWRITE)
        return tf.strings.split(spaced)  # on whitespace runs, dropping empty tokens

    def _fold(self, titles: tf.Tensor) -> tf.Tensor:
        """Case folding (NFKC_Casefold) + NFD + dropping \\p{Mn}, as a per-character table lookup.

        Core TF has no Unicode normalization op; the mapping was computed in Python with
        unicodedata. Invalid UTF-8 is replaced by U+FFFD.
        """
        # For pure-ASCII titles (nearly the whole catalog) the mapping is exactly A-Z -> a-z, which
        # the byte-wise StringLower does without splitting the title into one string per
        # character; only the other titles pay for the table.
        is_ascii = tf.strings.regex_full_match(titles, r"[\x00-\x7F]*")
        others = tf.where(~is_ascii)
        chars = tf.strings.unicode_split(tf.gather_nd(titles, others), "UTF-8", errors="replace")
        mapped = self._fold_table.lookup(chars.flat_values)
        folded = tf.where(tf.equal(mapped, _UNMAPPED), chars.flat_values, mapped)
        folded = tf.strings.reduce_join(chars.with_flat_values(folded), axis=1)
        return tf.tensor_scatter_nd_update(tf.strings.lower(titles), others, folded)

    def _wordpiece(self, words: tf.Tensor) -> tf.RaggedTensor:
        """Greedy longest-match-first WordPiece over a flat batch of words -> ids [words, (pieces)].

        Why this shape: the longest match at every character position of every word is independent
        of the path taken, so it is computed for the whole batch at once -- all character n-grams
        up to the longest vocabulary entry (one StringNGrams op, one hash lookup, one segment max).
        Only walking from piece to piece is sequential; that tf.while_loop does a gather per step
        over all words together and runs as many steps as the longest word has pieces (1-3 for
        catalog titles), instead of one loop iteration per candidate substring per word.
        """
        num_words = tf.shape(words, out_type=tf.int64)[0]
        fits = tf.strings.length(words) <= MAX_BYTES_PER_WORD  # bytes, see MAX_BYTES_PER_WORD
        # Most title words are vocabulary entries: their longest match from the start is the whole
        # word, one piece, no n-grams needed.
        whole_id = self._word_start_id(self._vocab_table.lookup(words))
        is_whole = fits & (whole_id >= 0)
        # Only the remaining words get characters. A word over the byte limit becomes [UNK]
        # whatever it contains, so it gets none either (a 10 kB "word" would otherwise cost
        # 10k * 18 n-grams).
        needs_split = fits & ~is_whole
        chars = tf.strings.unicode_split(tf.where(needs_split, words, ""), "UTF-8", errors="replace")
        num_chars = chars.row_lengths()
        char_starts = chars.row_starts()
        total_chars = tf.shape(chars.flat_values, out_type=tf.int64)[0]

        # StringNGrams emits, per word, all width-1 n-grams, then all width-2, ... Rebuild each
        # n-gram's (word, start, width) in that same order.
        max_width = self.max_piece_chars
        grams = tf.strings.ngrams(chars, ngram_width=list(range(1, max_width + 1)), separator="")
        widths_per_word = tf.minimum(num_chars, max_width)
        widths = tf.ragged.range(1, widths_per_word + 1).flat_values
        counts = tf.repeat(num_chars, widths_per_word) - widths + 1
        gram_word = tf.repeat(tf.repeat(tf.range(num_words), widths_per_word), counts)
        gram_start = tf.ragged.range(counts).flat_values
        gram_width = tf.repeat(widths, counts)

        packed = self._vocab_table.lookup(grams.flat_values)
        ids = tf.where(gram_start > 0, self._inner_id(packed), self._word_start_id(packed))
        # width in the high half so that the segment max picks the longest match, id in the low
        # half so that it comes along (there is one n-gram per (position, width)).
        score = tf.where(ids >= 0, tf.bitwise.left_shift(gram_width, 32) + ids, -1)
        position = tf.gather(char_starts, gram_word) + gram_start
        # Empty segments get the dtype's lowest value; appended -1 is the sentinel for idle words.
        best = tf.concat(
            [tf.math.unsorted_segment_max(score, position, num_segments=total_chars), [-1]], axis=0
        )

        word_ends = chars.row_limits()
        pieces = tf.TensorArray(tf.int64, size=1, dynamic_size=True, element_shape=[None])
        # Column 0 holds the whole-word matches (and later [UNK]), so the stack is never empty
        # even when no word needs the loop.
        pieces = pieces.write(0, tf.where(is_whole, whole_id, -1))

        def walking(step, pos, unk, pieces):
            return tf.reduce_any((pos < word_ends) & ~unk)

        def advance(step, pos, unk, pieces):
            active = (pos < word_ends) & ~unk
            match = tf.gather(best, tf.where(active, pos, total_chars))
            found = active & (match >= 0)
            # One position without any match turns the whole word into [UNK]
            # (split_unknown_characters=False).
            unk = unk | (active & (match < 0))
            pieces = pieces.write(step, tf.where(found, tf.bitwise.bitwise_and(match, 0xFFFFFFFF), -1))
            pos = pos + tf.where(found, tf.bitwise.right_shift(match, 32), 0)
            return step + 1, pos, unk, pieces

        _, _, unk, pieces = tf.while_loop(
            walking, advance, (tf.constant(1), char_starts, ~fits, pieces)
        )
        piece_ids = tf.transpose(pieces.stack())  # [words, 1 + steps]
        first_column = tf.equal(tf.range(tf.shape(piece_ids)[1]), 0)[tf.newaxis, :]
        unk_row = tf.where(first_column, tf.constant(self.unk_id, tf.int64), -1)
        piece_ids = tf.where(unk[:, tf.newaxis], unk_row, piece_ids)
        return tf.ragged.boolean_mask(piece_ids, piece_ids >= 0)

    @staticmethod
    def _word_start_id(packed: tf.Tensor) -> tf.Tensor:
        """Id of the looked-up text as a word start ("text"), -1 if not in the vocabulary."""
        return tf.bitwise.right_shift(packed, 32) - 1

    @staticmethod
    def _inner_id(packed: tf.Tensor) -> tf.Tensor:
        """Id of the looked-up text inside a word ("##text"), -1 if not in the vocabulary."""
        return tf.bitwise.bitwise_and(packed, 0xFFFFFFFF) - 1

    def _pack(self, tokens: tf.RaggedTensor) -> dict[str, tf.Tensor]:
        """[CLS] tokens[:max_seq_length - 2] [SEP], then [PAD] to max_seq_length."""
        batch = tf.shape(tokens.row_splits)[0] - 1
        tokens = tokens[:, : self.max_seq_length - 2]
        cls = tf.fill([batch, 1], tf.constant(self.cls_id, tf.int64))
        sep = tf.fill([batch, 1], tf.constant(self.sep_id, tf.int64))
        packed = tf.concat([cls, tokens, sep], axis=1)
        shape = [None, self.max_seq_length]
        word_ids = packed.to_tensor(default_value=self.pad_id, shape=shape)
        mask = tf.ones_like(packed).to_tensor(default_value=0, shape=shape)
        return {
            INPUT_WORD_IDS_KEY: word_ids,
            INPUT_MASK_KEY: mask,
            INPUT_TYPE_IDS_KEY: tf.zeros_like(word_ids),
        }


# --------------------------------------------------------------------------------------------
# The tokenization parameters of a TF-Hub BERT encoder, read from its SavedModel

# Where TF-Hub BERT encoders keep them (see official/nlp/tools/export_tfhub_lib.py): an asset and a
# root-level variable.
_VOCAB_ASSET = os.path.join("assets", "vocab.txt")
_DO_LOWER_CASE_CKPT_KEY = "do_lower_case/.ATTRIBUTES/VARIABLE_VALUE"


def encoder_vocab_file(handle: str) -> str:
    """Path of the WordPiece vocabulary shipped as an asset of the encoder SavedModel."""
    import tensorflow_hub as hub

    path = hub.resolve(str(handle))
    candidate = os.path.join(path, _VOCAB_ASSET)
    if tf.io.gfile.exists(candidate):
        return candidate
    # Older or differently-named assets: ask the SavedModel itself, as TF-Hub documents it.
    loaded = tf.saved_model.load(path)
    if not hasattr(loaded, "vocab_file"):
        raise ValueError(f"{handle} has no vocab_file asset: not a TF-Hub BERT encoder")
    return loaded.vocab_file.asset_path.numpy().decode("utf-8")


def encoder_lower_case(handle: str) -> bool:
    """The encoder's do_lower_case variable."""
    import tensorflow_hub as hub

    path = hub.resolve(str(handle))
    # Reading one tensor from the variables checkpoint avoids loading (and tracing) the model.
    try:
        return bool(tf.train.load_variable(os.path.join(path, "variables", "variables"),
                                           _DO_LOWER_CASE_CKPT_KEY))
    except (tf.errors.NotFoundError, ValueError):
        pass
    loaded = tf.saved_model.load(path)
    if not hasattr(loaded, "do_lower_case"):
        raise ValueError(f"{handle} has no do_lower_case variable: not a TF-Hub BERT encoder")
    return bool(loaded.do_lower_case.numpy())
