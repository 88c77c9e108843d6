#!/usr/bin/env bash
# The test command (README, CI): installs what the tests need, then runs
# formatting, lints and every test of the workspace.
#
#   scripts/test.sh            everything
#   scripts/test.sh -p NAME    only the tests of one package (after fmt + clippy)
#
# Tests start their own redis-server / Chromium / nsjail processes on
# 127.0.0.1 and free ports; nothing needs to be running beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi

if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
  # shellcheck disable=SC1091
  source "$HOME/.cargo/env"
fi

step() { printf '\n==> %s\n' "$*" >&2; }

step "setup (idempotent installs)"
bash scripts/setup.sh all

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build (the binaries the process-level tests start)"
cargo build --workspace --bins --locked

step "cargo test"
cargo test --workspace --locked "$@"
