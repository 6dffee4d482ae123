#!/usr/bin/env bash
# Installs what the test suite needs, starts the services it uses, then runs
# ruff, mypy and pytest. Safe to run again: every step checks before it acts.
# Usage: bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# --- system packages ----------------------------------------------------------------
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# The link-swap attack tests compile a static helper (tests/link_swapper.c).
command -v gcc >/dev/null 2>&1 || need+=(gcc)
dpkg -s libc6-dev >/dev/null 2>&1 || need+=(libc6-dev)
# The PostgreSQL store's tests start throwaway clusters (tests/pg.py).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# The private registry tests start a real registry with basic auth (tests/e2e).
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
# The deploy tests build the images on a Debian base made here and bring up the compose
# file; /metrics is checked with promtool; the systemd units with systemd-analyze.
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  apt_install "${need[@]}"
fi

# --- dockerd --------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  as_root sh -c 'nohup dockerd >/var/log/berth-test-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/berth-test-dockerd.log"; exit 1; }
fi

# --- deploy images, in the background -----------------------------------------------
# The deploy tests (tests/deploy, run last) need the images of deploy/build-images.sh,
# which take minutes: they build meanwhile, at the lowest priority, and the tests wait
# for the marker (done or failed) in this directory.
export BERTH_DEPLOY_BUILD_DIR="${TMPDIR:-/tmp}/berth-deploy-build"
rm -rf "$BERTH_DEPLOY_BUILD_DIR"
mkdir -p "$BERTH_DEPLOY_BUILD_DIR"
log "building the deploy images in the background (log: $BERTH_DEPLOY_BUILD_DIR/log)"
# setsid: its own process group, so that it can be stopped as a whole below.
setsid nice -n 19 ionice -c 3 bash -c '
  if bash deploy/build-images.sh >"$BERTH_DEPLOY_BUILD_DIR/log" 2>&1 </dev/null; then
    touch "$BERTH_DEPLOY_BUILD_DIR/done"
  else
    touch "$BERTH_DEPLOY_BUILD_DIR/failed"
  fi' &
deploy_build=$!
echo "$deploy_build" >"$BERTH_DEPLOY_BUILD_DIR/pid"
# A run that ends before the deploy tests (a selection, a failure) stops the build.
trap 'kill -- "-$deploy_build" 2>/dev/null || true' EXIT

# --- Python packages ------------------------------------------------------------------
log "installing berth with its test dependencies"
python3 -m pip install -q --disable-pip-version-check -e '.[test]'

# --- checks ---------------------------------------------------------------------------
log "ruff"
python3 -m ruff check common scheduler agent cli tests bench
python3 -m ruff format --check common scheduler agent cli tests bench
log "mypy"
python3 -m mypy

log "pytest"
export BERTH_TEST_DOCKER=1
python3 -m pytest -q -p no:cacheprovider "$@"
