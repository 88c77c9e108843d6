#!/bin/sh
# nsjail as the sandbox-runtime image runs it (NSJAIL_PATH points here).
#
# Docker's default seccomp profile refuses pivot_root(2) to every container,
# whatever its capabilities, so nsjail switches to the jail's root with
# mount(MS_MOVE) + chroot instead (--no_pivotroot). The jailed code cannot
# chroot back out: it runs as uid 65534 with every capability dropped, no
# /proc (the runtime passes --disable_proc) and no_new_privs set.
# See docs/deploy.md "Sandbox privileges".
exec /usr/local/bin/nsjail --no_pivotroot "$@"
