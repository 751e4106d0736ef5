#!/usr/bin/env bash
# Installs the Debian packages voxgate needs, only those missing (idempotent, ~0.1 s when done).
#   scripts/install-deps.sh run   what `make run` needs: espeak-ng (Piper phonemes), flite (TTS),
#                                 pocketsphinx-testdata (LibriVox recordings for "Try it")
#   scripts/install-deps.sh test  what the tests use: the above plus sip-tester (SIPp) and baresip-core (a softphone)
# The Rust toolchain and python3/pip (for scripts/fetch-models.sh) are expected on the machine.
set -euo pipefail
what="${1:-run}"
pkgs=(espeak-ng flite pocketsphinx-testdata)
if [ "$what" = "test" ]; then
  pkgs+=(sip-tester baresip-core)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
for tool in cargo python3; do
  command -v "$tool" >/dev/null || { echo "install-deps: $tool is required (Rust toolchain via rustup; python3 with pip)" >&2; exit 1; }
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}" >&2
$SUDO apt-get update -q >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=500 install -y -q --no-install-recommends "${missing[@]}" >&2
