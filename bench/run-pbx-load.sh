#!/usr/bin/env bash
# Seed-003 load (issue 8): N Socket.IO call rooms with audio both ways (SIPp answers and echoes),
# then N /call sessions in the same run for comparison. Needs SIPp (`sip-tester`) and a release
# build:  cargo build --release -p voxgate -p voxgate-bench
# Usage: bench/run-pbx-load.sh [N...]   (default: 100)
set -euo pipefail
cd "$(dirname "$0")/.."
T="${CARGO_TARGET_DIR:-target}/release"
WINDOW="${WINDOW:-20}"
ulimit -n 65536 2>/dev/null || true
for n in "${@:-100}"; do
  echo "== $n Socket.IO rooms (seed 003), audio both ways"
  "$T/pbx-load" --calls "$n" --window "$WINDOW" --server "$T/voxgate" 2>/dev/null
  echo "== $n /call sessions, same run"
  "$T/load" --sessions "$n" --secs "$WINDOW" --tts 0 --server "$T/voxgate" 2>/dev/null | grep -E "server (CPU|RSS)"
done
