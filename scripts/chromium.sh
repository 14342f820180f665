#!/usr/bin/env bash
# Makes sure headless Chromium is installed for the dashboard browser test
# (producer/tests/dashboard.rs): Debian's `chromium` package, installed when
# /usr/bin/chromium is missing. Idempotent: does nothing when it is already there.
# Needs root (or sudo); touches no network but Debian's package mirror.
set -euo pipefail

log() { printf '[chromium] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
log "installing Debian's chromium (headless browser for the dashboard test)"
as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
  chromium fonts-dejavu-core >/dev/null
[ -x /usr/bin/chromium ] || { log "chromium did not install: /usr/bin/chromium missing"; exit 1; }
log "$(/usr/bin/chromium --version 2>/dev/null || echo 'chromium installed')"
