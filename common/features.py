"""The single home of every name the stages agree on.

A catalog row becomes a raw example (ID_KEY, TITLE_KEY, IMAGE_BYTES_KEY, LABEL_KEY); the transform
graph turns it into the transformed features the model reads (BERT_INPUT_KEYS, IMAGE_KEY,
LABEL_ID_KEY); the exported model answers with the OUTPUT_* keys under the *_SIGNATURE names.
Nothing else in the project spells these strings.
"""

# Raw features: what the preprocess stage reads from a catalog and what a serving client sends.
ID_KEY = "id"
TITLE_KEY = "title"
IMAGE_BYTES_KEY = "image_bytes"  # encoded JPEG/PNG/GIF/BMP/WebP bytes, any size
LABEL_KEY = "label"  # the category string, whatever the catalog's column is called

# A catalog's columns unless a command or the pipeline names others (the label column has no default),
# and what joins the title and each extra text column: the model's text is that join.
DEFAULT_ID_COLUMN = "id"
DEFAULT_TITLE_COLUMN = "title"
DEFAULT_IMAGE_COLUMN = "image"
DEFAULT_TEXT_SEPARATOR = " | "
# Larger images (by their header) are quarantined before decoding: a decompression bomb is tiny on disk, and a
# 20-megapixel photo already decodes to 60 MB of RGB.
DEFAULT_MAX_IMAGE_PIXELS = 20_000_000
# The share of products in the eval split, by a hash of the id.
DEFAULT_EVAL_FRACTION = 0.2

# Transformed features: outputs of the transform graph, inputs of the model.
INPUT_WORD_IDS_KEY = "input_word_ids"  # the TF-Hub BERT encoder's input dict
INPUT_MASK_KEY = "input_mask"
INPUT_TYPE_IDS_KEY = "input_type_ids"
BERT_INPUT_KEYS = (INPUT_WORD_IDS_KEY, INPUT_MASK_KEY, INPUT_TYPE_IDS_KEY)
IMAGE_KEY = "image"  # JPEG bytes, already resized to the model's square input size
LABEL_ID_KEY = "label_id"  # int64 index into the label vocabulary (OOV bucket last)

# Encoder outputs, as the frozen-encoder mode caches them: the paper's f_t and f_i.
TEXT_FEATURES_KEY = "text_features"  # BERT pooled output [hidden]
IMAGE_FEATURES_KEY = "image_features"  # EfficientNet global-average-pooled output [1280]
# ... and, for fine-tuning the encoders' top blocks, their inputs: BERT's hidden states below its last
# blocks [title tokens, hidden] (with INPUT_MASK_KEY) and EfficientNet's feature map below its last
# blocks [h, w, channels].
TEXT_HIDDEN_KEY = "text_hidden"
IMAGE_MAP_KEY = "image_feature_map"
# The unimodal models' class probabilities, on which the decision-level heads train.
TEXT_PROBABILITIES_KEY = "text_probabilities"
IMAGE_PROBABILITIES_KEY = "image_probabilities"
# The lexical expert's log-probabilities (trainer/lexical.py) [classes], which the expert fusions read:
# out-of-fold on the train split, from the whole-train expert elsewhere and at serving.
LEXICAL_LOG_PROBS_KEY = "lexical_log_probs"

# The label vocabulary computed by tensorflow-transform, as named in the transform graph's assets.
LABEL_VOCABULARY_NAME = "label_vocabulary"

# Serving: the exported SavedModel's signatures and outputs.
SERVING_SIGNATURE = "serving_default"  # raw title + image_bytes
# Not a signature: the exported model's header check of raw images ([n] bytes → the same, or
# INVALID_ARGUMENT), which the local server runs before queueing a request for the model.
IMAGE_CHECK_FUNCTION = "check_image_headers"
TF_EXAMPLE_SIGNATURE = "serving_tf_example"  # serialized tf.Example with the raw keys
TRANSFORMED_SIGNATURE = "transformed_features"  # the TRANSFORMED_* tensors, for evaluation
OUTPUT_CLASSES_KEY = "classes"  # [batch, k] label strings, best first
OUTPUT_SCORES_KEY = "scores"  # [batch, k] calibrated probabilities of those classes
OUTPUT_LOGITS_KEY = "logits"  # uncalibrated logits: [batch, k] of `classes` in SERVING_SIGNATURE, every class in TRANSFORMED_SIGNATURE
OUTPUT_PROBABILITIES_KEY = "probabilities"  # [batch, classes] calibrated, from TRANSFORMED_SIGNATURE
# The stream weights (s_t, s_i) [batch] of the attention heads (the policy's choice for `policy`):
# which stream decided. Absent for models that weigh no streams.
OUTPUT_TEXT_WEIGHT_KEY = "text_weight"
OUTPUT_IMAGE_WEIGHT_KEY = "image_weight"
# The expert fusions: the lexical expert's share, part of OUTPUT_TEXT_WEIGHT_KEY (the title's share).
OUTPUT_LEXICAL_WEIGHT_KEY = "lexical_weight"
OUTPUT_NEEDS_REVIEW_KEY = "needs_review"  # [batch] bool: top-1 score below the model's review threshold
DEFAULT_TOP_K = 5

# Batch prediction: its record's fields besides ID_KEY, LABEL_KEY and the signature's outputs, the
# formats of its files (JSON Lines, or Parquet for a data warehouse), and products per call of the
# signature (TF Serving's max_batch_size in k8s/ is 32; offline there is no latency to keep, and a
# larger batch spreads the per-call cost further).
MODEL_VERSION_FIELD = "model_version"
MODEL_FIELD = "model"
JSONL = "jsonl"
PARQUET = "parquet"
PREDICTION_FORMATS = (JSONL, PARQUET)
DEFAULT_BATCH_SIZE = 64

# The paper's text encoder (BERT-base uncased), the production default of every BERT handle.
PAPER_BERT_HANDLE = "https://tfhub.dev/tensorflow/bert_en_uncased_L-12_H-768_A-12/4"

# TF Serving: the model's name under the serving base, and its ports.
MODEL_NAME = "hanet"
GRPC_PORT = 8500
REST_PORT = 8501

# The models of the paper, which are also the training stages' names: the unimodal models train first;
# the feature-level fusions fuse f_t and f_i, the decision-level ones the unimodal models' probabilities.
TEXT_ONLY = "text_only"
IMAGE_ONLY = "image_only"
CONCAT = "concat"
KEYLESS = "keyless"
KEY_BASED = "key_based"
HANET = "hanet"
DECISION_LEVEL = "decision_level"
POLICY = "policy"
# Beyond the paper: HANet's attention over the experts' log-probabilities (text model, image model and
# the lexical expert), a per-product weighted product of experts.
HANET_EXPERTS = "hanet_experts"
UNIMODAL_FUSIONS = (TEXT_ONLY, IMAGE_ONLY)
FEATURE_FUSIONS = (TEXT_ONLY, IMAGE_ONLY, CONCAT, KEYLESS, KEY_BASED, HANET)
PAPER_DECISION_FUSIONS = (DECISION_LEVEL, POLICY)
# Decision-level heads that also read LEXICAL_LOG_PROBS_KEY.
EXPERT_FUSIONS = (HANET_EXPERTS,)
DECISION_FUSIONS = PAPER_DECISION_FUSIONS + EXPERT_FUSIONS
ATTENTION_FUSIONS = (KEYLESS, KEY_BASED, HANET)
PAPER_FUSIONS = FEATURE_FUSIONS + PAPER_DECISION_FUSIONS
FUSIONS = PAPER_FUSIONS + EXPERT_FUSIONS

# Split names, as directories under the examples artifact.
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
# Under the examples artifact, RAW_EXAMPLES_DIR/<split>/ holds the split's raw tf.Examples (ID_KEY,
# TITLE_KEY, IMAGE_BYTES_KEY with the catalog's original image bytes, LABEL_KEY): what a client would
# send, for comparing models of other input sizes like for like.
RAW_EXAMPLES_DIR = "raw"
# Carved out of the train split by a salted hash of the id (trainer/data.py), for choices and calibration.
VALIDATION_SPLIT = "validation"
