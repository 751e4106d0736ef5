#!/usr/bin/env bash
# Seed-001 agent latency (issue 9): caller stops -> agent's first audio, with its breakdown, for 1, 2
# and 4 concurrent agent calls (SIPp callees speaking LibriVox), first with a scripted
# OpenAI-compatible LLM answering its first token after 200 ms (voxgate's own share), then with the
# offline LLM; then `tts` -> first audio and end of speech -> asrFinal on plain /call sessions
# (1 session, and 4 talking at once). Needs SIPp (`sip-tester`) and a release build:
#   cargo build --release -p voxgate -p voxgate-bench
# Usage: bench/run-agent-latency.sh [SIZES]   (default 1,2,4)
set -euo pipefail
cd "$(dirname "$0")/.."
T="${CARGO_TARGET_DIR:-target}/release"
SIZES="${1:-1,2,4}"
# Say which build is measured (a stale target/ beside a CARGO_TARGET_DIR build misleads).
echo "binaries: $T (voxgate built $(date -r "$T/voxgate" '+%F %T'))"
echo "== agent calls, scripted LLM (200 ms to the first token)"
"$T/agent-latency" --calls "$SIZES" --llm scripted --first-token-ms 200 --server "$T/voxgate"
echo "== agent calls, offline LLM"
"$T/agent-latency" --calls "$SIZES" --llm offline --server "$T/voxgate"
echo "== /call: 1 session with ASR and tts"
"$T/load" --sessions 1 --asr 1 --tts 1 --secs 30 --server "$T/voxgate"
echo "== /call: 4 sessions talking, ASR on"
"$T/load" --sessions 4 --asr 4 --tts 2 --secs 30 --server "$T/voxgate"
