#!/usr/bin/env bash
# Memory per idle stateful session (issue 13): N sessions started exactly as
# sandbox-runtime starts them (one nsjail + the Python driver each, default
# limits), one small cell run in each, then the PSS and RSS of every session
# process read from /proc (crates/sandbox-runtime/examples/bench_session_memory.rs).
#
#   scripts/bench_session_memory.sh                  # N = SANDBOX_CONCURRENCY's default (CPUs)
#   BENCH_SESSIONS="2 16 64" scripts/bench_session_memory.sh
#
# PSS divides shared pages (the interpreter's binary and libraries, nsjail's)
# among the processes sharing them: per-session PSS is what one more session
# costs at that count. RSS counts shared pages in full for every process.
# Run as root (nsjail), like the runtime.
set -euo pipefail
# shellcheck source=scripts/bench-common.sh
source "$(dirname "$0")/bench-common.sh"
bench_args "$@"

SESSIONS=${BENCH_SESSIONS:-$(nproc)}
log "building release example"
(cd "$ROOT" && cargo build --release -q -p sandbox-runtime --example bench_session_memory)
bench_loadavg before
for n in $SESSIONS; do
  "$ROOT/target/release/examples/bench_session_memory" "$n"
done
bench_loadavg after
