#!/usr/bin/env bash
# Runs the /call load benchmark at the sizes the closing notes quote. Needs a release build:
#   cargo build --release -p voxgate -p voxgate-bench     (or `make bench`, which runs this)
# Usage: bench/run-load.sh [SESSIONS...]   (default: 50 200 1000, then 4 sessions with ASR)
set -euo pipefail
cd "$(dirname "$0")/.."
T="${CARGO_TARGET_DIR:-target}/release"
SECS="${SECS:-30}"
ulimit -n 65536 2>/dev/null || true
for n in "${@:-50 200 1000}"; do
  for s in $n; do
    echo "== $s sessions, VAD on, ASR off"
    "$T/load" --sessions "$s" --secs "$SECS" --tts 5 --server "$T/voxgate"
  done
done
if [ $# -eq 0 ]; then
  echo "== 4 sessions, ASR on"
  "$T/load" --sessions 4 --asr 4 --tts 2 --secs "$SECS" --server "$T/voxgate"
fi
