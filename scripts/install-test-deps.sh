#!/usr/bin/env bash
# Debian packages the sandra-models audio/whisper tests use to make their clips:
# espeak-ng (speech), opus-tools (opusenc/opusdec: encoder and libopus reference decode), sox.
# Idempotent; CI runs it as root. Tests skip (with a visible line) when these are missing.
set -euo pipefail
pkgs=(espeak-ng opus-tools sox)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "test deps present: ${pkgs[*]}"
  exit 0
fi
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
