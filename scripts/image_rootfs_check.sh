#!/usr/bin/env bash
# Checks the runtime images' install steps and confinement without a Docker
# engine: builds a Debian bookworm root file system with debootstrap, runs the
# Dockerfile's install steps in it (scripts/setup.sh runtime / sandbox / web,
# then the same clean-up), copies the release binaries in, and runs a real code
# task and a real web task through Redis with the runtimes inside that root,
# entered with pivot_root like runc, under Docker's default seccomp profile,
# capability set (+ the compose file's cap_add for the sandbox) and masked
# /proc paths — the web runtime as an unprivileged uid, like compose runs it.
#
#   scripts/image_rootfs_check.sh [--keep]
#
# Needs root, network access to the Debian and PyPI registries (≈ 400 MB,
# 2–4 min), and `scripts/setup.sh base dev` (redis, debootstrap is installed
# here). Not part of the test suite. MODE does not apply. --keep leaves the
# root file system in $ROOTFS (default /tmp/adp-rootfs) for inspection.
# Everything is mounted in a private mount namespace, so nothing stays mounted.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROOTFS=${ROOTFS:-/tmp/adp-rootfs}
KEEP=0
case "${1:-}" in
  --keep) KEEP=1 ;;
  -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "image_rootfs_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac
log() { printf '[rootfs] %s\n' "$*" >&2; }
die() { printf '[rootfs] ERROR: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, chroot, namespaces)"
PROFILE=/usr/local/share/adp/docker-default-seccomp.json
[[ -s $PROFILE ]] || die "$PROFILE missing: run scripts/setup.sh dev"

# Re-enter in a private mount namespace: every mount below vanishes with it.
if [[ -z "${ADP_ROOTFS_NS:-}" ]]; then
  ADP_ROOTFS_NS=1 exec unshare -m --propagation private "$0" "$@"
fi

command -v debootstrap >/dev/null || { log "apt-get install debootstrap"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
for b in dispatcher sandbox-runtime web-runtime; do
  [[ -x target/release/$b ]] || die "target/release/$b missing: scripts/build.sh (MODE=local) first"
done

PIDS=()
cleanup() {
  local code=$?
  if [[ ${#PIDS[@]} -gt 0 ]]; then kill "${PIDS[@]}" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  if [[ $KEEP -eq 0 ]]; then
    umount -R "$ROOTFS/proc" "$ROOTFS/dev" "$ROOTFS/sys" 2>/dev/null || true
    if ! grep -q " $ROOTFS/" /proc/self/mountinfo; then rm -rf "$ROOTFS"; fi
  fi
  exit "$code"
}
trap cleanup EXIT

if [[ ! -x "$ROOTFS/usr/bin/apt-get" ]]; then
  log "debootstrap bookworm (minbase) into $ROOTFS"
  debootstrap --variant=minbase bookworm "$ROOTFS" http://deb.debian.org/debian >/dev/null
fi
mount -t proc proc "$ROOTFS/proc"
mount --rbind /dev "$ROOTFS/dev"
mount --rbind /sys "$ROOTFS/sys"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
install -D -m 0755 scripts/setup.sh "$ROOTFS/usr/local/lib/adp/setup.sh"
pip_cert=()
if [[ -n "${PIP_CERT:-}" ]]; then
  # A site CA (proxy) the host trusts: the rootfs pip must trust it too.
  cp "$PIP_CERT" "$ROOTFS/root/site-ca.crt"; pip_cert=(PIP_CERT=/root/site-ca.crt)
fi
in_root() { chroot "$ROOTFS" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "${pip_cert[@]}" "$@"; }

log "Dockerfile steps: setup.sh runtime, sandbox (+ purge python3-pip), web"
in_root bash -c '/usr/local/lib/adp/setup.sh runtime && rm -rf /var/lib/apt/lists/*'
in_root bash -c '/usr/local/lib/adp/setup.sh sandbox && apt-get purge -y -qq --auto-remove python3-pip >/dev/null && rm -rf /var/lib/apt/lists/* /root/.cache && /usr/local/bin/nsjail --help >/dev/null 2>&1'
in_root bash -c '/usr/local/lib/adp/setup.sh web && rm -rf /var/lib/apt/lists/*'
in_root bash -c 'DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-seccomp >/dev/null'  # for the emulation only
install -m 0755 target/release/dispatcher target/release/sandbox-runtime target/release/web-runtime "$ROOTFS/usr/local/bin/"
install -m 0755 docker/nsjail-docker.sh "$ROOTFS/usr/local/bin/nsjail-docker"
install -D -m 0755 crates/deploy-checks/tests/support/docker_confine.sh "$ROOTFS/confine/docker_confine.sh"
install -m 0755 crates/deploy-checks/tests/support/seccomp_exec.py "$ROOTFS/confine/"
install -m 0644 "$PROFILE" "$ROOTFS/confine/profile.json"
rm -rf "$ROOTFS/app"; mkdir -p "$ROOTFS/app/output/trajectories" "$ROOTFS/site"; chmod 1777 "$ROOTFS/app/output" "$ROOTFS/app/output/trajectories"
echo '<html><head><title>Rootfs</title></head><body><h1>rootfs page 9</h1></body></html>' >"$ROOTFS/site/index.html"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RP=$(free_port); SP=$(free_port); WP=$(free_port); PP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save "" >/dev/null 2>&1 & PIDS+=($!)
python3 -m http.server "$PP" --bind 127.0.0.1 --directory "$ROOTFS/site" >/dev/null 2>&1 & PIDS+=($!)

# Enter the root like runc: a private mount namespace, pivot_root, old root detached.
# shellcheck disable=SC2016  # the inner script expands its own arguments
pivot() { exec unshare -m bash -c 'set -e; R=$1; shift; mount --make-rprivate /; mount --rbind "$R" "$R"; cd "$R"; mkdir -p .oldroot; pivot_root . .oldroot; cd /; umount -l /.oldroot; exec "$@"' _ "$ROOTFS" "$@"; }
common=(REDIS_URL="redis://127.0.0.1:$RP" OUTPUT_DIR=/app/output METRICS_HOST=127.0.0.1 LOG_FORMAT=json)
sandbox_caps=$(sed -n '/^  sandbox-runtime:/,/^  [a-z]/p' docker-compose.yml | sed -n '/cap_add:/,/security_opt:/p' | sed -n 's/^ *- //p' | paste -sd, -)
log "sandbox-runtime: root, cap_add ${sandbox_caps:-none}, Docker seccomp + masked /proc"
pivot /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin "${common[@]}" METRICS_PORT="$SP" NSJAIL_PATH=/usr/local/bin/nsjail-docker \
  /confine/docker_confine.sh /confine/profile.json "${sandbox_caps:--}" -- /usr/local/bin/sandbox-runtime >"$ROOT/output/rootfs-sandbox.log" 2>&1 & PIDS+=($!)
log "web-runtime: uid 1000, no added capability, Docker seccomp + masked /proc"
pivot /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp XDG_CACHE_HOME=/tmp/.cache XDG_CONFIG_HOME=/tmp/.config "${common[@]}" METRICS_PORT="$WP" \
  CHROME_PATH=/usr/lib/chromium/chromium-headless-shell WEB_BLOCK_PRIVATE=false \
  /confine/docker_confine.sh /confine/profile.json - -- setpriv --reuid=1000 --regid=1000 --clear-groups /usr/local/bin/web-runtime >"$ROOT/output/rootfs-web.log" 2>&1 & PIDS+=($!)

for p in "$SP" "$WP"; do
  for _ in $(seq 1 120); do curl -fs -o /dev/null "http://127.0.0.1:$p/health" && break; sleep 0.5; done
  curl -fsS "http://127.0.0.1:$p/health" >&2 || die "a runtime in the rootfs is not healthy (logs: output/rootfs-*.log)"
  echo >&2
done
cat >"$ROOTFS/app/tasks.jsonl" <<EOF
{"task_id":"rootfs_code","task_type":"code","description":"sum","constraints":{"code":"import sys\nprint(sum(range(11)), sys.version.split()[0])","expected_output":"55"},"max_steps":2,"timeout":60}
{"task_id":"rootfs_web","task_type":"web","description":"read","constraints":{"start_url":"http://127.0.0.1:$PP/","expected_text":"rootfs page 9","actions":[{"type":"extract"},{"type":"finish","answer":"ok"}]},"max_steps":3,"timeout":60}
EOF
in_root env "${common[@]}" TASK_FILE=/app/tasks.jsonl FOLLOW=false METRICS_PORT=0 /usr/local/bin/dispatcher >/dev/null 2>&1
for id in rootfs_code rootfs_web; do
  f="$ROOTFS/app/output/trajectories/$id.json"
  for _ in $(seq 1 120); do [[ -f $f ]] && break; sleep 0.5; done
  [[ -f $f ]] || die "$id: no trajectory (logs: output/rootfs-*.log)"
  jq -e .success "$f" >/dev/null || die "$id failed: $(jq -c '{error_type,error_message}' "$f")"
  log "ok  $id: $(jq -c '{runtime_id, final_result}' "$f") owner uid $(stat -c %u "$f") mode $(stat -c %a "$f")"
done
log "PASSED: image install steps and container confinement work in a bookworm rootfs"
