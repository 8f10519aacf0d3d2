#!/usr/bin/env bash
# Installs the browser the end-to-end test drives: Debian's chromium at /usr/bin/chromium.
# Idempotent: does nothing when /usr/bin/chromium is already there. Never downloads a browser through
# Playwright (`playwright install`): the Debian package is used instead.
# Exit status: 0 when /usr/bin/chromium is usable afterwards, 1 when it could not be installed.
set -uo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  echo "install_browser: $CHROMIUM already installed ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
  exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    echo "install_browser: $CHROMIUM is missing and installing it needs root (or password-less sudo)" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: $CHROMIUM is missing and this system has no apt-get" >&2
  exit 1
fi

echo "install_browser: installing Debian's chromium ..."
if $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
  if [ -x "$CHROMIUM" ]; then
    echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
    exit 0
  fi
fi
echo "install_browser: could not install chromium with apt-get" >&2
exit 1
