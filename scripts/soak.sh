#!/usr/bin/env bash
# Soak run: mixed load with periodic faults, then a ledger.
#
#   scripts/soak.sh MINUTES          e.g. scripts/soak.sh 5
#   SOAK_RATE=20 scripts/soak.sh 30  task lines per second (default 12)
#   SOAK_FAULT_EVERY=10 ...          seconds between faults (default 20)
#   REL_SEED=N ...                   repeat a run's random choices
#   REL_KEEP=1 ...                   keep the work dir (logs, output, AOF)
#
# Builds release binaries, then runs crates/reliability/src/bin/soak.rs: a
# private redis-server (127.0.0.1, free port, AOF everysec), the dispatcher
# and two sandbox-runtimes; faults rotate through SIGKILL / SIGTERM / SIGSTOP
# of runtime B, SIGKILL of the dispatcher, SIGTERM and SIGKILL of Redis.
# Prints the ledger (tasks in, trajectories out, rejected, dead, duplicates,
# RSS of each process at start and end) and exits 1 if it does not balance.
# The JSON ledger is also saved to target/reliability/soak.json.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ $# -ne 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  [[ $# -eq 1 ]] && exit 0 || exit 64
fi
if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
  # shellcheck disable=SC1091
  source "$HOME/.cargo/env"
fi
cd "$ROOT"
echo "[soak] building release binaries" >&2
cargo build --release -q --locked --workspace --bins
ADP_BIN_DIR="$ROOT/target/release" exec "$ROOT/target/release/soak" "$1"
