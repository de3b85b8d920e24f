"""The HANet model: text stream (TF-Hub BERT), image stream (EfficientNet) → fusion head → logits.

One fusion head (the layer named FUSION_LAYER) sits on one of three forms of the streams, one per
`tune` mode (trainer/train.py):

    full    raw inputs (BERT ids, pixels) → whole encoders → f_t, f_i → head      `build_model`
    top     cached hidden states below BERT's last blocks, cached feature map below
            EfficientNet's last blocks → those blocks → f_t, f_i → head            `top_model`
    frozen  cached f_t, f_i → head                                                 `head_model`

Whatever form trained, the exported model is the full one: `transfer` moves the trained weights
into it (the tuned top blocks into the TF-Hub encoder's own variables and the Keras EfficientNet's
own layers). Decision-level heads also train in probability space (`probability_model`), on the
unimodal models' predictions.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf
import tf_keras as keras

from common import features
from trainer import encoders, fusion
from trainer.fusion import HeadConfig

FROZEN, TOP, FULL = "frozen", "top", "full"
TUNES = (FROZEN, TOP, FULL)
FUSION_LAYER = "fusion"
TEXT_ENCODER_LAYER = "bert_encoder"  # the name encoders.text_encoder gives the hub.KerasLayer
TEXT_TOP_LAYER = "text_top"
IMAGE_TOP_LAYER = "image_top"
TEXT_POOLINGS = encoders.TEXT_POOLINGS


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    fusion: str = fusion.HANET
    # A TF-Hub BERT encoder: a tfhub.dev/Kaggle URL in production, a local SavedModel folder here.
    bert_handle: str = features.PAPER_BERT_HANDLE
    # "imagenet", a local weights file, or None for random initialisation.
    image_weights: str | None = "imagenet"
    image_variant: str = "b0"
    image_size: int = 224
    max_seq_length: int = 64
    # f_t: "pooled" is BERT's pooled output (the paper's); "mean" averages sequence_output over the
    # title's tokens, for encoders trained that way that ship no trained pooler (sentence-transformers
    # checkpoints such as the MiniLM stand-in, whose pooled output is a random projection).
    text_pooling: str = "pooled"
    head: HeadConfig = HeadConfig()
    # tune="top": how many of each encoder's last blocks fine-tune; the layers below run once per
    # product and are cached (trainer/features_cache.py). Chosen on hm-products' validation split
    # (docs/results.md, "How many blocks tune"): a second BERT block lost 0.6-2.4 points, a second
    # EfficientNet block gained 1.3-2.1.
    text_top_blocks: int = 1
    image_top_blocks: int = 2

    def __post_init__(self):
        if self.fusion not in fusion.FUSIONS:
            raise ValueError(f"unknown fusion {self.fusion!r}; expected one of {fusion.FUSIONS}")
        if self.text_pooling not in TEXT_POOLINGS:
            raise ValueError(f"text_pooling must be one of {TEXT_POOLINGS}, got {self.text_pooling!r}")
        if self.text_top_blocks < 1 or self.image_top_blocks < 1:
            raise ValueError("text_top_blocks and image_top_blocks must be at least 1")
        if isinstance(self.head, dict):  # read back from JSON (settings files, KFP metadata)
            object.__setattr__(self, "head", HeadConfig(**self.head))

    def with_fusion(self, name: str) -> "ModelConfig":
        return dataclasses.replace(self, fusion=name)

    def uses_text(self) -> bool:
        return self.fusion != fusion.IMAGE_ONLY

    def uses_image(self) -> bool:
        return self.fusion != fusion.TEXT_ONLY

    def encoder_fields(self, top: bool) -> dict:
        """What determines the cached encoder outputs of a product (the feature cache's key)."""
        names = ["bert_handle", "text_pooling", "image_weights", "image_variant", "image_size", "max_seq_length"]
        if top:
            names += ["text_top_blocks", "image_top_blocks"]
        return {name: getattr(self, name) for name in names}

    def make_head(self, num_classes: int) -> keras.layers.Layer:
        return fusion.fusion_head(self.fusion, num_classes, self.head, name=FUSION_LAYER)


def model_input_layers(config: ModelConfig) -> dict:
    inputs = {
        key: keras.Input([config.max_seq_length], dtype=tf.int32, name=key) for key in features.BERT_INPUT_KEYS
    }
    inputs[features.IMAGE_KEY] = keras.Input(
        [config.image_size, config.image_size, 3], dtype=tf.float32, name=features.IMAGE_KEY
    )
    return inputs


def _bert_inputs(inputs: dict) -> dict:
    return {key: inputs[key] for key in features.BERT_INPUT_KEYS}


def _text_features(config: ModelConfig, bert, inputs: dict):
    outputs = bert(_bert_inputs(inputs))
    return encoders.pool_text(outputs["sequence_output"], outputs["pooled_output"],
                              inputs[features.INPUT_MASK_KEY], config.text_pooling)  # [batch, H]


def _image_encoder(config: ModelConfig) -> keras.Model:
    return encoders.image_encoder(config.image_weights, config.image_variant, config.image_size)


def apply_head(head: keras.layers.Layer, inputs: dict, num_classes: int, f_t, f_i):
    """head(f_t, f_i) → logits; a head that reads the lexical expert's log-probabilities also gets
    them, as one more input of the model (LEXICAL_LOG_PROBS_KEY [classes], added to `inputs`)."""
    if not getattr(head, "reads_lexical", False):
        return head(f_t, f_i)
    lexical = inputs[features.LEXICAL_LOG_PROBS_KEY] = keras.Input([num_classes], name=features.LEXICAL_LOG_PROBS_KEY)
    return head(f_t, f_i, lexical=lexical)


def build_model(config: ModelConfig, num_classes: int, trainable_encoders: bool = True) -> keras.Model:
    """Model inputs (BERT ids, float pixels in [0, 255]) → class logits [batch, num_classes]."""
    inputs = model_input_layers(config)
    # Decision-level heads fuse the predictions of trained unimodal models, which stay fixed.
    trainable_encoders = trainable_encoders and config.fusion not in fusion.DECISION_FUSIONS
    f_t = f_i = None
    if config.uses_text():
        f_t = _text_features(config, encoders.text_encoder(config.bert_handle, trainable=trainable_encoders), inputs)
    if config.uses_image():
        cnn = _image_encoder(config)
        cnn.trainable = trainable_encoders
        # BatchNorm stays in inference mode even when fine-tuning: batch statistics of 32 products
        # are too noisy to replace ImageNet's (the Keras transfer-learning recipe).
        f_i = cnn(inputs[features.IMAGE_KEY], training=False)  # [batch, 1280]
    logits = apply_head(config.make_head(num_classes), inputs, num_classes, f_t, f_i)
    return keras.Model(inputs, logits, name=f"hanet_{config.fusion}")


def encoder_model(config: ModelConfig, top: bool = False) -> keras.Model:
    """Model inputs → what the cache keeps of a product, in inference mode: f_t [batch, H] and
    f_i [batch, 1280] (TEXT_FEATURES_KEY, IMAGE_FEATURES_KEY) and, with `top`, the inputs of the
    encoders' top blocks: BERT's hidden states [batch, seq, H] below its last text_top_blocks blocks
    (TEXT_HIDDEN_KEY) and EfficientNet's feature map [batch, h, w, C] below its last image_top_blocks
    blocks (IMAGE_MAP_KEY). One forward pass gives both."""
    inputs = model_input_layers(config)
    bert = encoders.text_encoder(config.bert_handle, trainable=False)
    text = encoders.hub_encoder_outputs(bert, _bert_inputs(inputs)) if top else bert(_bert_inputs(inputs))
    cnn = _image_encoder(config)
    outputs = {
        features.TEXT_FEATURES_KEY: encoders.pool_text(text["sequence_output"], text["pooled_output"],
                                                       inputs[features.INPUT_MASK_KEY], config.text_pooling),
    }
    if top:
        lower, upper = encoders.efficientnet_split(cnn, config.image_top_blocks)
        feature_map = lower(inputs[features.IMAGE_KEY], training=False)
        outputs[features.IMAGE_FEATURES_KEY] = upper(feature_map, training=False)
        outputs[features.IMAGE_MAP_KEY] = feature_map
        layers = len(text["encoder_outputs"])
        if not 1 <= config.text_top_blocks < layers:
            raise ValueError(f"text_top_blocks must be in [1, {layers - 1}] for this {layers}-block encoder")
        outputs[features.TEXT_HIDDEN_KEY] = text["encoder_outputs"][layers - config.text_top_blocks - 1]
    else:
        outputs[features.IMAGE_FEATURES_KEY] = cnn(inputs[features.IMAGE_KEY], training=False)
    return keras.Model(inputs, {k: tf.cast(v, tf.float32) for k, v in outputs.items()}, name="encoders")


def head_model(config: ModelConfig, num_classes: int, text_dim: int, image_dim: int) -> keras.Model:
    """Cached features {TEXT_FEATURES_KEY, IMAGE_FEATURES_KEY} → logits: the fusion head alone."""
    f_t = keras.Input([text_dim], name=features.TEXT_FEATURES_KEY)
    f_i = keras.Input([image_dim], name=features.IMAGE_FEATURES_KEY)
    inputs = {features.TEXT_FEATURES_KEY: f_t, features.IMAGE_FEATURES_KEY: f_i}
    logits = apply_head(config.make_head(num_classes), inputs, num_classes, f_t, f_i)
    return keras.Model(inputs, logits, name=f"head_{config.fusion}")


def top_model(config: ModelConfig, num_classes: int, hidden_size: int, image_map_shape) -> keras.Model:
    """Cached top-block inputs → logits: {TEXT_HIDDEN_KEY [seq, H], INPUT_MASK_KEY [seq]} and/or
    {IMAGE_MAP_KEY [h, w, C]} (only the streams the fusion uses) → the encoders' last blocks,
    initialised from the pretrained encoders → head."""
    inputs, f_t, f_i = {}, None, None
    if config.uses_text():
        hidden = inputs[features.TEXT_HIDDEN_KEY] = keras.Input([None, hidden_size], name=features.TEXT_HIDDEN_KEY)
        mask = inputs[features.INPUT_MASK_KEY] = keras.Input([None], dtype=tf.int32, name=features.INPUT_MASK_KEY)
        bert = encoders.text_encoder(config.bert_handle, trainable=False)
        f_t = encoders.bert_top(bert, config.text_top_blocks, config.text_pooling)(hidden, mask)
    if config.uses_image():
        feature_map = inputs[features.IMAGE_MAP_KEY] = keras.Input(list(image_map_shape), name=features.IMAGE_MAP_KEY)
        _, upper = encoders.efficientnet_split(_image_encoder(config), config.image_top_blocks)
        f_i = upper(feature_map, training=False)  # BatchNorm in inference mode, as in build_model
    logits = apply_head(config.make_head(num_classes), inputs, num_classes, f_t, f_i)
    return keras.Model(inputs, logits, name=f"top_{config.fusion}")


def probability_model(config: ModelConfig, num_classes: int) -> keras.Model:
    """{TEXT_PROBABILITIES_KEY, IMAGE_PROBABILITIES_KEY} [batch, classes] → logits: the decision
    network of a decision-level head alone, trained on the unimodal models' predictions."""
    head = config.make_head(num_classes)
    if not isinstance(head, fusion.DecisionFusion):
        raise ValueError(f"{config.fusion} is not a decision-level fusion")
    inputs = {key: keras.Input([num_classes], name=key)
              for key in (features.TEXT_PROBABILITIES_KEY, features.IMAGE_PROBABILITIES_KEY)}
    network = fusion.DecisionNetwork(head, name=FUSION_LAYER)
    if getattr(head, "reads_lexical", False):
        lexical = inputs[features.LEXICAL_LOG_PROBS_KEY] = keras.Input([num_classes], name=features.LEXICAL_LOG_PROBS_KEY)
        logits = network(inputs[features.TEXT_PROBABILITIES_KEY], inputs[features.IMAGE_PROBABILITIES_KEY],
                         lexical=lexical)
    else:
        logits = network(inputs[features.TEXT_PROBABILITIES_KEY], inputs[features.IMAGE_PROBABILITIES_KEY])
    return keras.Model(inputs, logits, name=f"probabilities_{config.fusion}")


def explained_model(model: keras.Model) -> keras.Model:
    """`model` (inputs → logits) as inputs → {"logits", and "stream_weights" (s_t, s_i) [batch, 2]
    when its head weighs the streams}: the same layers and weights, called once."""
    head = fusion_layer(model)
    outputs = {"logits": model.outputs[0]}
    if getattr(head, "weighs_streams", False):
        node = head.inbound_nodes[0]
        f_t, f_i = node.call_args[:2]  # the features the head was built on
        lexical = {"lexical": node.call_kwargs["lexical"]} if "lexical" in node.call_kwargs else {}
        outputs["stream_weights"] = head.stream_weights(f_t, f_i, **lexical)
    return keras.Model(model.inputs, outputs, name=f"{model.name}_explained")


# ---- Moving weights between the forms ---------------------------------------------------------


def fusion_layer(model: keras.Model) -> keras.layers.Layer:
    return model.get_layer(FUSION_LAYER)


def _layer(model: keras.Model, name: str):
    return next((layer for layer in model.layers if layer.name == name), None)


def _image_encoder_of(model: keras.Model):
    """(the EfficientNet layer of any form, whether it is the whole network), or (None, False)."""
    top = _layer(model, IMAGE_TOP_LAYER)
    if top is not None:
        return top, False
    return next(((layer, True) for layer in model.layers if isinstance(layer, keras.Model)), (None, False))


def copy_weights(source: keras.layers.Layer, target: keras.layers.Layer) -> None:
    """Copies weights between two layers built alike, layer by layer: a model's flat weight list
    is reordered when its `trainable` flag differs, a primitive layer's is not."""
    if isinstance(source, keras.Model) and isinstance(target, keras.Model):
        if len(source.layers) != len(target.layers):
            raise ValueError(f"cannot copy {source.name} into {target.name}: different architectures")
        for src, dst in zip(source.layers, target.layers):
            copy_weights(src, dst)
    else:
        target.set_weights(source.get_weights())


def transfer_text(source: keras.Model, target: keras.Model) -> None:
    """The text stream of `source` (any form) into `target` (any form with a text stream)."""
    source_top, target_top = _layer(source, TEXT_TOP_LAYER), _layer(target, TEXT_TOP_LAYER)
    source_bert, target_bert = _layer(source, TEXT_ENCODER_LAYER), _layer(target, TEXT_ENCODER_LAYER)
    if source_top is not None and target_top is not None:
        copy_weights(source_top, target_top)
    elif source_top is not None and target_bert is not None:
        source_top.assign_to(target_bert)
    elif source_bert is not None and target_bert is not None:
        copy_weights(source_bert, target_bert)
    elif source_bert is not None and target_top is not None:
        target_top.load_from(source_bert)
    # else: a frozen (head-only) source, whose text stream is the pretrained encoder's


def transfer_image(source: keras.Model, target: keras.Model) -> None:
    """The image stream of `source` (any form) into `target`: the whole EfficientNet layer by layer,
    or the layers of its last blocks by their (Keras-given, unique) names."""
    (theirs, whole_target), (mine, whole_source) = _image_encoder_of(target), _image_encoder_of(source)
    if mine is None or theirs is None:
        return
    if whole_source and whole_target:
        copy_weights(mine, theirs)  # the Normalization layer's name differs between instances
        return
    by_name = {layer.name: layer for layer in theirs.layers}
    for layer in mine.layers:
        if not layer.weights or (whole_source and layer.name not in by_name):
            continue  # a whole network's layers below the target's top blocks
        if layer.name not in by_name:
            raise ValueError(f"cannot move {layer.name} of {source.name} into {target.name}: no such layer")
        by_name[layer.name].set_weights(layer.get_weights())


def transfer(source: keras.Model, target: keras.Model) -> None:
    """Everything `source` trained into `target` of the same fusion, in any form (e.g. a top or head
    model into the full model to export)."""
    transfer_text(source, target)
    transfer_image(source, target)
    copy_weights(fusion_layer(source), fusion_layer(target))


def load_unimodal_heads(model: keras.Model, text_model: keras.Model, image_model: keras.Model) -> None:
    """Gives a decision-level head the trained unimodal heads (models of any form)."""
    head = fusion_layer(model)
    if isinstance(head, fusion.DecisionFusion):
        head.load_unimodal_heads(fusion_layer(text_model), fusion_layer(image_model))


def init_from_unimodal(model: keras.Model, text_model: keras.Model, image_model: keras.Model) -> None:
    """Starts `model` from the trained unimodal models: the text stream of `text_model`, the image
    stream of `image_model` and, for the decision-level heads, both of their classifier heads."""
    load_unimodal_heads(model, text_model, image_model)
    if _layer(model, TEXT_TOP_LAYER) is not None or _layer(model, TEXT_ENCODER_LAYER) is not None:
        transfer_text(text_model, model)
    transfer_image(image_model, model)
