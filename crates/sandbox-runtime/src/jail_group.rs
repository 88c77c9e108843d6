//! Kills the runtime's running jails when the runtime dies, however it dies.
//!
//! Every nsjail the runtime starts joins one process group. Its leader is a
//! tiny guardian (`/bin/sh`) whose stdin is a pipe from the runtime that is
//! never written to. When the runtime exits, crashes or is `kill -9`ed, the
//! kernel closes the pipe; the guardian reads EOF and sends SIGKILL to the
//! whole group. Each nsjail has its jailed child armed with
//! `PR_SET_PDEATHSIG(SIGKILL)`, so the Python inside dies with it. Without
//! this, a killed runtime's jails would run on until their wall limit.
//!
//! Why not `PR_SET_PDEATHSIG` on nsjail itself: that needs a `pre_exec` hook,
//! which makes std fork the runtime for every step instead of using
//! `posix_spawn` (vfork), and the fork measurably cost throughput (~0.2 ms of
//! CPU per step). Joining a process group keeps the `posix_spawn` path
//! (`POSIX_SPAWN_SETPGROUP`).

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The guardian: waits for EOF on stdin, then kills its process group
/// (itself and every nsjail in it).
const GUARDIAN_SCRIPT: &str = "read -r _; kill -KILL 0";

/// The process group the runtime's jails join, with its guardian.
#[derive(Debug)]
pub struct JailGroup {
    shell: String,
    guardian: Mutex<Option<Child>>,
    warned: AtomicBool,
}

impl Default for JailGroup {
    fn default() -> Self {
        JailGroup::new("/bin/sh")
    }
}

impl JailGroup {
    /// A group whose guardian runs under `shell` (started on first use).
    pub fn new(shell: &str) -> Self {
        JailGroup {
            shell: shell.to_owned(),
            guardian: Mutex::new(None),
            warned: AtomicBool::new(false),
        }
    }

    /// Like [`JailGroup::pgid`], but a failure is logged (once) and gives
    /// `None`: the jail then runs outside the group, still bounded by its
    /// wall limit, rather than the task failing.
    pub fn pgid_or_warn(&self) -> Option<u32> {
        match self.pgid() {
            Ok(id) => Some(id),
            Err(e) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "Jails run without a guardian: if the runtime is killed, its running jails live on until their wall limit.");
                }
                None
            }
        }
    }

    /// The process group id a new jail should join, starting a guardian if
    /// there is none yet or the last one is gone.
    pub fn pgid(&self) -> io::Result<u32> {
        let mut guardian = self
            .guardian
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(child) = guardian.as_mut() {
            match child.try_wait() {
                Ok(None) => return Ok(child.id()),
                Ok(Some(status)) => {
                    tracing::warn!(%status, "The jail group's guardian exited; starting a new one.");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot check the jail group's guardian; starting a new one.")
                }
            }
        }
        let child = Command::new(&self.shell)
            .args(["-c", GUARDIAN_SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env_clear()
            .process_group(0)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot start the jail group's guardian ({}): {e}",
                        self.shell
                    ),
                )
            })?;
        let id = child.id();
        *guardian = Some(child);
        Ok(id)
    }

    /// Pid of the current guardian, if one is running.
    #[cfg(test)]
    fn guardian_pid(&self) -> Option<u32> {
        self.guardian
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(Child::id)
    }
}

impl Drop for JailGroup {
    fn drop(&mut self) {
        // Closing the pipe tells the guardian to kill whatever is left in
        // the group; reap it so no zombie stays behind.
        let guardian = self
            .guardian
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(mut child) = guardian.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use test_support::{process_running, wait_until};

    fn wait_gone(pid: u32) -> bool {
        wait_until(Duration::from_secs(5), || !process_running(pid)).is_ok()
    }

    #[test]
    fn members_die_when_the_group_is_dropped() {
        let group = JailGroup::default();
        let pgid = group.pgid().expect("guardian");
        assert_eq!(group.pgid().expect("same guardian"), pgid);
        let mut member = Command::new("sleep")
            .arg("60")
            .process_group(pgid as i32)
            .spawn()
            .expect("sleep");
        let pid = member.id();
        assert!(process_running(pid));
        drop(group);
        let _ = member.wait();
        assert!(wait_gone(pid), "member {pid} survived");
    }

    #[test]
    fn a_dead_guardian_is_replaced() {
        let group = JailGroup::default();
        let first = group.pgid().expect("guardian");
        let _ = Command::new("kill")
            .args(["-KILL", &first.to_string()])
            .status();
        assert!(wait_gone(first), "guardian {first} survived SIGKILL");
        let second = group.pgid().expect("new guardian");
        assert_ne!(first, second);
        assert_eq!(group.guardian_pid(), Some(second));
    }

    #[test]
    fn a_missing_shell_is_a_clear_error() {
        let group = JailGroup::new("/nonexistent/sh");
        let err = group.pgid().expect_err("no shell");
        assert!(err.to_string().contains("guardian"), "{err}");
    }
}
