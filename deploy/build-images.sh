#!/usr/bin/env bash
# Builds Berth's container images without an image registry:
#   berth-base:bookworm    Debian bookworm (minbase) with python3, made by mmdebstrap from
#                          Debian's packages and imported with `docker import`; made
#                          only when missing (or with --rebuild-base)
#   berth-scheduler        the scheduler, run as the unprivileged user berth (uid 10001)
#   berth-agent            the agent (drives the host's dockerd through its socket)
#   berth-postgres         PostgreSQL from Debian's postgresql package, for compose.yaml
# Python packages come from wheels built here (`pip wheel`, through this host's PyPI
# access); the images install them with `pip install --no-index`, so building them
# needs no network beyond the Debian mirror (for the base and PostgreSQL).
#
# Usage, from anywhere, as root (mmdebstrap) with dockerd running:
#   deploy/build-images.sh [--rebuild-base]
# Environment:
#   BERTH_IMAGE_TAG        tag of the three images (default: latest)
#   BERTH_DEBIAN_MIRROR    Debian mirror (default: http://deb.debian.org/debian)
#   BERTH_DEBIAN_SECURITY  security mirror (default: http://deb.debian.org/debian-security)
#   PYTHON                 the Python that builds the wheels (must be 3.11, like bookworm's)
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=berth-base:bookworm
TAG=${BERTH_IMAGE_TAG:-latest}
MIRROR=${BERTH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${BERTH_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
PYTHON=${PYTHON:-python3}
# The legacy builder uses local images as they are; BuildKit may look the base up in a
# registry, and there is none.
export DOCKER_BUILDKIT=0

log() { printf '== %s\n' "$*"; }
die() { printf 'build-images.sh: %s\n' "$*" >&2; exit 1; }

rebuild_base=0
for arg in "$@"; do
  case "$arg" in
    --rebuild-base) rebuild_base=1 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument: $arg (see --help)" ;;
  esac
done

docker info >/dev/null 2>&1 || die "dockerd does not answer (docker info failed)"
# Wheels with compiled parts (aiohttp, asyncpg, msgspec, ...) must match the image's Python.
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || die "$PYTHON is not Python 3.11 (bookworm's python3 is); set PYTHON"

# --- the base -------------------------------------------------------------------------
if [ "$rebuild_base" -eq 1 ] || ! docker image inspect "$BASE" >/dev/null 2>&1; then
  command -v mmdebstrap >/dev/null || die "mmdebstrap is missing (apt-get install mmdebstrap)"
  log "making $BASE with mmdebstrap"
  # No recommends, no manuals, translations or documentation (copyrights kept): these
  # settings stay in the image, so packages installed on it later are as lean.
  mmdebstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    bookworm - \
    "deb $MIRROR bookworm main" \
    "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY bookworm-security main" </dev/null \
    | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
fi

# --- wheels ---------------------------------------------------------------------------
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
log "building wheels"
# From a copy: building in place would leave build/ and *.egg-info in the checkout.
mkdir "$context/src"
cp -a pyproject.toml README.md common scheduler agent cli "$context/src/"
find "$context/src" -name __pycache__ -prune -exec rm -rf {} +
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check "$context/src" -w "$context/wheels"
rm -rf "$context/src"
cp deploy/postgres-entrypoint.sh "$context/"

# --- the images -----------------------------------------------------------------------
for name in scheduler agent postgres; do
  log "building berth-$name:$TAG"
  old=$(docker image inspect -f '{{.Id}}' "berth-$name:$TAG" 2>/dev/null || true)
  docker build --force-rm -f "deploy/Containerfile.$name" -t "berth-$name:$TAG" "$context"
  new=$(docker image inspect -f '{{.Id}}' "berth-$name:$TAG")
  # The image this one replaced, unless a container still uses it: rebuilds do not pile up.
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    docker image rm "$old" >/dev/null 2>&1 || true
  fi
done
# The build stages' images (labelled in the Containerfiles): their venv is in the images.
docker image prune --force --filter label=berth.stage=build >/dev/null
log "built berth-scheduler:$TAG, berth-agent:$TAG and berth-postgres:$TAG on $BASE"
