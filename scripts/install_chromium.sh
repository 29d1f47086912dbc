#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver (for the Selenium page tests) when either is missing.
#
# Idempotent: does nothing when both /usr/bin/chromium and /usr/bin/chromedriver run. Needs apt-get and root (or
# sudo); elsewhere it says what to install and exits 0, and the browser tests skip with that reason.
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
DRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"

if [[ -x "$CHROMIUM" && -x "$DRIVER" ]] && "$DRIVER" --version >/dev/null 2>&1; then
  echo "chromium already installed: $("$DRIVER" --version)"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium.sh: no apt-get here; install chromium and its chromedriver yourself (the browser tests skip)" >&2
  exit 0
fi
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install_chromium.sh: not root and no password-less sudo; run: apt-get install -y chromium chromium-driver" >&2
    exit 0
  fi
fi
echo "installing chromium and chromium-driver with apt-get ..."
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
"$DRIVER" --version
