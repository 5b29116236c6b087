#!/usr/bin/env bash
# Avatar fleet: one entry point for a fresh machine.
#   ./start.sh           install what is missing, then serve on the embedded defaults
#   ./start.sh test      install what is missing, then run the whole test suite
#   ./start.sh install   only install (virtualenv, Python packages, Debian packages)
#   ./start.sh doctor    check this host and explain what to fix
set -euo pipefail
cd "$(dirname "$0")"

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

log() { printf 'start.sh: %s\n' "$*" >&2; }

apt_install() {
  # Debian packages, only when missing; root (or sudo) is needed for this step.
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# What the tests need from Debian: a real browser and its driver for the web page tests, a real
# Redis (and its Sentinel) for the store tests, and iproute2 for the hosts of the multi-host tests
# (network namespaces).
TEST_DEBIAN_PACKAGES=(chromium chromium-driver redis-server iproute2)

install() {
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv --help >/dev/null 2>&1; then apt_install python3-venv; fi
    log "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  # Reinstall only when a requirements file changed since the last install.
  local stamp="$VENV/.requirements.sha256" want
  want=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing Python packages"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-gpu.txt
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
    echo "$want" > "$stamp"
  fi
}

case "${1:-serve}" in
  install)
    install
    apt_install "${TEST_DEBIAN_PACKAGES[@]}" ;;
  test)
    install
    apt_install "${TEST_DEBIAN_PACKAGES[@]}"
    shift
    exec "$VENV/bin/python" -m pytest "$@" ;;
  serve)
    install
    # A fresh data directory gets a demo avatar, registered from the bundled public-domain
    # portrait the way any upload is.
    avatars="${AVATAR_DATA_DIR:-data}/avatars"
    if [ -z "$(ls "$avatars" 2>/dev/null)" ]; then
      "$VENV/bin/python" -m avatar_manager register assets/astronaut.png --name demo \
        --description "the bundled demo portrait (public domain, NASA)" >/dev/null
    fi
    # The supervisor and the API (gunicorn) on 127.0.0.1:8607; SIGTERM or Ctrl-C stops everything.
    exec "$VENV/bin/python" -m avatar_manager ;;
  doctor)
    install
    exec "$VENV/bin/python" -m avatar_manager doctor ;;
  *)
    echo "usage: $0 [serve|test|install|doctor]" >&2; exit 2 ;;
esac
