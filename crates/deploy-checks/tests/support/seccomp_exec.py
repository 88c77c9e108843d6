#!/usr/bin/python3
"""Exec a command under a Docker seccomp profile (moby JSON format), as runc
applies it to a container holding the given capabilities.

    seccomp_exec.py PROFILE.json CAP[,CAP...] -- CMD...

Needs Debian's python3-seccomp (libseccomp bindings)."""
import json
import os
import platform
import sys

import seccomp


def main() -> None:
    profile_path, caps_csv = sys.argv[1], sys.argv[2]
    if sys.argv[3] != "--":
        raise SystemExit("usage: seccomp_exec.py PROFILE CAPS -- CMD...")
    argv = sys.argv[4:]
    caps = {c.strip().upper() for c in caps_csv.split(",") if c.strip()}
    caps = {c if c.startswith("CAP_") else "CAP_" + c for c in caps}
    with open(profile_path) as f:
        prof = json.load(f)
    kernel = tuple(int(x) for x in platform.release().split("-")[0].split(".")[:2])
    default_errno = prof.get("defaultErrnoRet", 1)

    def action(name, errno_ret=None):
        if name == "SCMP_ACT_ALLOW":
            return seccomp.ALLOW
        if name == "SCMP_ACT_ERRNO":
            return seccomp.ERRNO(errno_ret if errno_ret is not None else default_errno)
        if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
            return seccomp.KILL
        if name == "SCMP_ACT_KILL_PROCESS":
            return seccomp.KILL_PROCESS
        raise SystemExit(f"unsupported action {name}")

    filt = seccomp.SyscallFilter(defaction=action(prof["defaultAction"], default_errno))
    # runc loads the filter while it still holds CAP_SYS_ADMIN: no NNP needed.
    filt.set_attr(seccomp.Attr.CTL_NNP, 0)
    for arch in (seccomp.Arch.X86, seccomp.Arch.X32):
        try:
            filt.add_arch(arch)
        except Exception:
            pass
    ops = {
        "SCMP_CMP_NE": seccomp.NE, "SCMP_CMP_LT": seccomp.LT, "SCMP_CMP_LE": seccomp.LE,
        "SCMP_CMP_EQ": seccomp.EQ, "SCMP_CMP_GE": seccomp.GE, "SCMP_CMP_GT": seccomp.GT,
        "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
    }
    arch_name = "amd64" if platform.machine() == "x86_64" else platform.machine()
    for rule in prof["syscalls"]:
        inc = rule.get("includes") or {}
        exc = rule.get("excludes") or {}
        if inc.get("arches") and arch_name not in inc["arches"]:
            continue
        if exc.get("arches") and arch_name in exc["arches"]:
            continue
        if inc.get("caps") and not all(c in caps for c in inc["caps"]):
            continue
        if exc.get("caps") and any(c in caps for c in exc["caps"]):
            continue
        if inc.get("minKernel"):
            if kernel < tuple(int(x) for x in inc["minKernel"].split(".")[:2]):
                continue
        act = action(rule["action"], rule.get("errnoRet"))
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        for name in names:
            args = []
            for a in rule.get("args") or []:
                if a["op"] == "SCMP_CMP_MASKED_EQ":
                    args.append(seccomp.Arg(a["index"], ops[a["op"]], a["value"], a.get("valueTwo", 0)))
                else:
                    args.append(seccomp.Arg(a["index"], ops[a["op"]], a["value"]))
            try:
                filt.add_rule(act, name, *args)
            except (RuntimeError, ValueError, OSError):
                pass  # a syscall this architecture does not have
    filt.load()
    os.execvp(argv[0], argv)


main()
