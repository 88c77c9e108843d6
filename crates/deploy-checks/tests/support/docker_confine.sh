#!/usr/bin/env bash
# Runs a command the way Docker would run it in a container, for the parts
# that decide whether nsjail works there (no Docker engine needed):
#   - Docker's masked and read-only /proc and /sys paths (moby oci defaults),
#   - the capability bounding set: Docker's defaults plus cap_add,
#   - Docker's default seccomp profile, filtered by those capabilities.
# Not emulated: AppArmor (compose sets apparmor:unconfined), the container's
# own pid/net/uts namespaces and its root filesystem.
#
#   unshare -m docker_confine.sh PROFILE.json CAP_ADD[,CAP...|-] -- CMD...
#
# Must run as root inside a fresh mount namespace (unshare -m).
set -euo pipefail
profile=$1 cap_add=$2
shift 2
[[ "${1:-}" == -- ]] && shift

DOCKER_DEFAULT_CAPS="chown,dac_override,fsetid,fowner,mknod,net_raw,setgid,setuid,setfcap,setpcap,net_bind_service,sys_chroot,kill,audit_write"
caps=$DOCKER_DEFAULT_CAPS
if [[ "$cap_add" != - ]]; then
  caps="$caps,$(tr 'A-Z' 'a-z' <<<"$cap_add" | sed 's/cap_//g')"
fi

mount --make-rprivate /
for p in /proc/asound /proc/acpi /proc/kcore /proc/keys /proc/latency_stats /proc/timer_list \
         /proc/timer_stats /proc/sched_debug /proc/scsi /sys/firmware /sys/devices/virtual/powercap; do
  [[ -e "$p" ]] || continue
  if [[ -d "$p" ]]; then mount -t tmpfs -o ro tmpfs "$p"; else mount --bind /dev/null "$p"; fi
done
for p in /proc/bus /proc/fs /proc/irq /proc/sys /proc/sysrq-trigger; do
  [[ -e "$p" ]] || continue
  mount --bind "$p" "$p"
  mount -o remount,bind,ro "$p"
done

here=$(dirname "$0")
exec /usr/bin/python3 "$here/seccomp_exec.py" "$profile" "$caps" -- \
  setpriv --bounding-set "-all,+${caps//,/,+}" --inh-caps -all -- "$@"
