#!/usr/bin/env bash
# Installs the Debian packages voxgate needs, only those missing (idempotent, ~0.1 s when done).
#   scripts/install-deps.sh run   what `make run` needs: espeak-ng (Piper phonemes), flite (TTS),
#                                 pocketsphinx-testdata (LibriVox recordings for "Try it"), and the offline
#                                 LLM runtime: xllamacpp (llama.cpp's server as a PyPI wheel) in a venv under
#                                 ~/.cache/voxgate/llm-venv (`[llm] python`), which voxgate starts as a child
#   scripts/install-deps.sh test  what the tests use: the above plus sip-tester (SIPp) and baresip-core (a softphone),
#                                 asterisk-core-sounds-en-wav (prompts recorded by a human voice, CC-BY-SA 3.0:
#                                 its "oh" is the recorded backchannel of the agent tests),
#                                 and, from PyPI into .venv-peers/, PJSUA2 (PJSIP's Python binding),
#                                 streamdouble (plays Twilio's side of a Media Streams call), the official
#                                 python-socketio client, lameenc (an MP3 encoder for test audio) and
#                                 schemathesis (fuzzes the OpenAPI document); from npm,
#                                 the official socket.io-client (crates/voxgate/tests/peers/node, from its lock)
# The Rust toolchain and python3/pip (for scripts/fetch-models.sh) are expected on the machine.
set -euo pipefail
what="${1:-run}"
pkgs=(espeak-ng flite pocketsphinx-testdata)
# Debian's python3 needs python3-venv for `python3 -m venv`.
python3 -c 'import ensurepip' 2>/dev/null || pkgs+=(python3-venv)
if [ "$what" = "test" ]; then
  pkgs+=(sip-tester baresip-core openssl asterisk-core-sounds-en-wav)
  # The official Socket.IO client runs on Node.js (Debian's is fine).
  command -v npm >/dev/null || pkgs+=(nodejs npm)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
for tool in cargo python3; do
  command -v "$tool" >/dev/null || { echo "install-deps: $tool is required (Rust toolchain via rustup; python3 with pip)" >&2; exit 1; }
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "install-deps: installing ${missing[*]}" >&2
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=500 install -y -q --no-install-recommends "${missing[@]}" >&2
fi
# The offline LLM runtime (SPEECH.md "LLM"): llama.cpp's server embedded in the xllamacpp wheel.
llm_venv="${VOXGATE_CACHE:-$HOME/.cache/voxgate}/llm-venv"
if ! "$llm_venv/bin/python" -c 'import xllamacpp' 2>/dev/null; then
  echo "install-deps: installing xllamacpp (the offline LLM runtime) into $llm_venv" >&2
  [ -x "$llm_venv/bin/pip" ] || python3 -m venv "$llm_venv" >&2
  "$llm_venv/bin/pip" install -q xllamacpp==2026.10.11549 >&2
fi
if [ "$what" = "test" ]; then
  root="$(cd "$(dirname "$0")/.." && pwd)"
  venv="$root/.venv-peers"
  if ! "$venv/bin/python" -c 'import pjsua2, streamdouble, socketio, websocket, lameenc, schemathesis' 2>/dev/null; then
    echo "install-deps: installing pjsua2-python, streamdouble, python-socketio, lameenc and schemathesis into $venv" >&2
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q pjsua2-python==2.15.1.post1 streamdouble==0.3.0 \
      "python-socketio[client]==5.18.1" lameenc==1.9.0 schemathesis==4.32.5 >&2
  fi
  node_dir="$root/crates/voxgate/tests/peers/node"
  if [ ! -d "$node_dir/node_modules/socket.io-client" ]; then
    echo "install-deps: installing socket.io-client (npm ci) in $node_dir" >&2
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
  fi
fi
