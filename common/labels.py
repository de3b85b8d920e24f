"""The class vocabulary: class index ↔ label string, as the transform graph defines it."""
from __future__ import annotations

from common import features

# The name of the last class: labels unseen (or too rare) in the train split share it.
OOV_LABEL = "[OOV]"


def label_names(tft_output) -> list[str]:
    """Class index → label string of a `tft.TFTransformOutput`; the last index is the OOV bucket."""
    vocabulary = tft_output.vocabulary_by_name(features.LABEL_VOCABULARY_NAME)
    return [v.decode("utf-8") if isinstance(v, bytes) else v for v in vocabulary] + [OOV_LABEL]


def num_classes(tft_output) -> int:
    # The vocabulary plus its one out-of-vocabulary bucket.
    return tft_output.vocabulary_size_by_name(features.LABEL_VOCABULARY_NAME) + 1
