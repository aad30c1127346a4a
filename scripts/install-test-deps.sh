#!/usr/bin/env bash
# Debian packages Sandra links against: libespeak-ng-dev (phonemes for voice replies; its data is
# espeak-ng-data) and libopus-dev (encoding voice notes); a build without them fails to link.
# Debian packages the sandra-models tests use to make their inputs:
# espeak-ng (speech), opus-tools (opusenc/opusdec: encoder and libopus reference decode), sox;
# imagemagick with fonts-dejavu-core and fonts-liberation2 (the OCR tests render their images);
# systemd for systemd-analyze (the unit file test; it skips without it).
# Idempotent; CI runs it as root. Audio tests skip (with a visible line) when theirs are missing;
# the OCR tests fail without ImageMagick. chromium + chromium-driver: the Admin Portal browser test
# (tests/it/portal_browser.rs; it skips, saying so, without them).
set -euo pipefail
pkgs=(libespeak-ng-dev espeak-ng-data libopus-dev espeak-ng opus-tools sox imagemagick fonts-dejavu-core fonts-liberation2 systemd chromium chromium-driver)
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
