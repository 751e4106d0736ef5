#!/usr/bin/env bash
# Runs the SIP load benchmark (SIPp -> voxgate, G.711 with RTP both ways, VAD on, ASR off) at the
# sizes the closing notes quote. Needs SIPp (`sip-tester`) and a release build:
#   cargo build --release -p voxgate -p voxgate-bench
# Usage: bench/run-sip-load.sh            (100 and 500 concurrent calls, then 1000 short calls at 100/s)
set -euo pipefail
cd "$(dirname "$0")/.."
T="${CARGO_TARGET_DIR:-target}/release"
WINDOW="${WINDOW:-20}"
ulimit -n 65536 2>/dev/null || true
for n in 100 500; do
  echo "== $n concurrent calls"
  "$T/sip-load" --mode concurrent --calls "$n" --rate 50 --window "$WINDOW" --server "$T/voxgate" 2>/dev/null
done
echo "== 1000 short calls offered at 100/s"
"$T/sip-load" --mode cps --calls 1000 --rate 100 --server "$T/voxgate" 2>/dev/null
