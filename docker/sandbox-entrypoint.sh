#!/bin/sh
# Entrypoint of the sandbox-runtime image: runs the runtime as the owner of
# OUTPUT_DIR (the host user's bind-mounted ./output), so the trajectories it
# writes belong to that user, as those of the dispatcher and web-runtime do
# (they run as ADP_UID:ADP_GID).
#
# nsjail needs three capabilities to map the jailed code to uid/gid 65534 and
# build its namespaces: SETUID and SETGID (uid_map/gid_map entries other than
# its own id) and SYS_ADMIN (compose cap_add). The container starts as root;
# setpriv switches to the owner's uid/gid and keeps exactly these three as
# ambient capabilities, which survive the exec of nsjail-docker and nsjail.
# Every other capability of root is gone, and the jailed code still runs as
# 65534 with none (nsjail drops them and sets no_new_privs).
#
# When OUTPUT_DIR is root's (no bind mount, or one Docker created), the
# runtime keeps running as root, as before. See docs/deploy.md.
#
# Per-jail cgroups: Docker mounts the container's own cgroups read-only. With
# SYS_ADMIN the entrypoint remounts them read-write (only the container's own
# subtree is visible there, so jails' groups nest under the container's limits)
# and gives the runtime's user the NSJAIL parent groups. Where that is refused
# (another runtime, a stricter profile) nothing changes: the runtime detects
# that no cgroup is usable and reports its rlimit fallback as degraded
# (/health `jail_limits`, metric sandbox_limits_degraded).
set -eu
out=${OUTPUT_DIR:-/app/output}
uid=$(stat -c %u "$out" 2>/dev/null || echo 0)
gid=$(stat -c %g "$out" 2>/dev/null || echo 0)
if [ "$(id -u)" = 0 ] && [ "${SANDBOX_CGROUPS:-auto}" != off ]; then
  for dir in /sys/fs/cgroup/memory /sys/fs/cgroup/pids; do
    [ -d "$dir" ] || continue
    if [ ! -w "$dir" ] || ! touch "$dir" 2>/dev/null; then
      mount -o remount,rw,bind "$dir" 2>/dev/null || mount -o remount,rw "$dir" 2>/dev/null || true
    fi
    if mkdir -p "$dir/NSJAIL" 2>/dev/null; then
      chown -R "$uid:$gid" "$dir/NSJAIL" 2>/dev/null || true
    fi
  done
fi
if [ "$(id -u)" = 0 ] && [ "$uid" != 0 ]; then
  caps=+sys_admin,+setuid,+setgid
  exec setpriv --reuid "$uid" --regid "$gid" --clear-groups \
    --inh-caps "$caps" --ambient-caps "$caps" \
    -- /usr/local/bin/sandbox-runtime "$@"
fi
exec /usr/local/bin/sandbox-runtime "$@"
