//! One child process as the parent holds it: signalled and watched through a pidfd, reaped once.
//!
//! Both kinds of child ferropool starts go through this handle: a `ferropool.Process`
//! (`process.rs`) and a pool worker (`supervisor.rs`, kept by the engine in its per-worker slot,
//! `scheduler/slot.rs`). A child is either ours, started by `Command` (we reap it with `wait`),
//! or the fork server's (`forkserver.rs`): the server reaps it and writes its exit status to a
//! socket, which doubles as the descriptor to poll for its end.
//!
//! Signalling by pid is only safe while the pid is reserved for that process, and the one
//! invariant every `unsafe` block here relies on is: **a pid is signalled only while reserved**,
//! that is, for our own child until we reap it, and for a fork-server child (whose server may reap
//! it at any moment, after which the pid may name a stranger) only its group, and only while its
//! pidfd says it has not exited. Otherwise the pidfd, which names that process and no other, is
//! what is signalled. A fork-server child with no pidfd (a kernel without `pidfd_open`) is the one
//! exception, signalled by pid as the best there is, and only where the pool must stop a worker.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use crate::task::ExitInfo;

/// Who reaps the child.
enum Reaper {
    /// Our child: we do, with `wait`.
    Spawned(Child),
    /// The fork server's child: the server does, and writes `(code, signal)` to this
    /// non-blocking socket, which closes without a word if the server itself died.
    Forked(UnixStream),
}

/// A started child process (see the module docs for how it is signalled).
pub struct ChildHandle {
    pid: u32,
    reaper: Reaper,
    /// Readable once the process has exited; `None` after `close_pidfd`, or on a kernel
    /// without `pidfd_open`.
    pidfd: Option<OwnedFd>,
    /// How it ended, once reaped (or told of by the fork server).
    exit: Option<ExitInfo>,
}

impl ChildHandle {
    /// Starts `command` as our child, with a pidfd to watch it by.
    pub fn spawn(command: &mut Command) -> io::Result<ChildHandle> {
        let child = command.spawn()?;
        let pid = child.id();
        Ok(ChildHandle {
            pid,
            reaper: Reaper::Spawned(child),
            // our unreaped child: the pid cannot have been recycled yet
            pidfd: pidfd_open(pid),
            exit: None,
        })
    }

    /// Takes charge of `pid`, a child of the fork server, which will write its exit status to
    /// `status`; `pidfd` must have been opened before the child could have been reaped.
    pub fn forked(pid: u32, status: UnixStream, pidfd: Option<OwnedFd>) -> io::Result<ChildHandle> {
        status.set_nonblocking(true)?;
        Ok(ChildHandle {
            pid,
            reaper: Reaper::Forked(status),
            pidfd,
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The pidfd, readable once the process has exited (`Process.sentinel`).
    pub fn pidfd(&self) -> Option<RawFd> {
        self.pidfd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Closes the pidfd; the child can still be reaped, and our own child still signalled.
    pub fn close_pidfd(&mut self) {
        self.pidfd = None;
    }

    /// The descriptor that becomes readable when the exit status can be had without blocking:
    /// the fork server's status socket, or for our own child its pidfd.
    pub fn exit_fd(&self) -> Option<RawFd> {
        match &self.reaper {
            Reaper::Forked(status) => Some(status.as_raw_fd()),
            Reaper::Spawned(_) => self.pidfd(),
        }
    }

    /// The process id to signal by, while it is reserved for this process (module docs);
    /// never 0 or negative, which would name a whole group.
    fn reserved_pid(&self) -> Option<libc::pid_t> {
        let pid = libc::pid_t::try_from(self.pid).ok().filter(|&p| p > 0)?;
        match (&self.reaper, &self.pidfd) {
            (Reaper::Spawned(_), _) => self.exit.is_none().then_some(pid),
            (Reaper::Forked(_), Some(fd)) => (!has_exited(fd)).then_some(pid),
            (Reaper::Forked(_), None) => None,
        }
    }

    /// Sends `signal` to the process unless it has been reaped; an exited, unreaped one is no
    /// error. A fork-server child without a pidfd is not signalled: its pid may name another.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        if self.exit.is_some() {
            return Ok(());
        }
        if let Some(fd) = &self.pidfd {
            return pidfd_signal(fd, signal);
        }
        match self.reserved_pid() {
            Some(pid) => kill(pid, signal),
            None => Ok(()),
        }
    }

    /// Sends `signal` to the child's whole process group, so what it started goes too, and to
    /// the child itself, which may not lead its group yet if it was forked a moment ago.
    pub fn signal_group(&self, signal: i32) {
        if let Some(pid) = self.reserved_pid() {
            let _ = killpg(pid, signal);
        }
        match (&self.reaper, &self.pidfd) {
            (Reaper::Forked(_), Some(fd)) => {
                let _ = pidfd_signal(fd, signal);
            }
            (Reaper::Spawned(_), _) => {
                let _ = self.signal(signal);
            }
            (Reaper::Forked(_), None) => {
                // no pidfd (a kernel without pidfd_open): by pid, the best there is
                if let Ok(pid) = libc::pid_t::try_from(self.pid) {
                    if pid > 0 {
                        let _ = killpg(pid, signal);
                        let _ = kill(pid, signal);
                    }
                }
            }
        }
    }

    /// How the process ended, reaping it, or `None` while it runs.
    pub fn try_reap(&mut self) -> io::Result<Option<ExitInfo>> {
        if self.exit.is_none() {
            let pid = self.pid;
            self.exit = match &mut self.reaper {
                Reaper::Spawned(child) => child.try_wait()?.map(|status| exit_info(pid, status)),
                Reaper::Forked(status) => {
                    let mut bytes = [0u8; 8];
                    match status.read(&mut bytes) {
                        Ok(8) => Some(forked_exit(pid, bytes)),
                        // the server closed it without a status: it died, and took the child along
                        Ok(_) => Some(ExitInfo {
                            pid,
                            code: None,
                            signal: None,
                        }),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                        Err(e) => return Err(e),
                    }
                }
            };
        }
        Ok(self.exit)
    }

    /// Kills the child's group and waits for the child itself (a fork-server child's word for at
    /// most five seconds: then it is reported killed).
    pub fn kill_and_reap(&mut self) -> ExitInfo {
        self.signal_group(libc::SIGKILL);
        let pid = self.pid;
        let killed = ExitInfo {
            pid,
            code: None,
            signal: Some(libc::SIGKILL),
        };
        if let Some(info) = self.exit {
            return info;
        }
        let info = match &mut self.reaper {
            Reaper::Spawned(child) => {
                let _ = child.kill();
                child.wait().map_or(killed, |status| exit_info(pid, status))
            }
            Reaper::Forked(status) => {
                // the server reaps it at once; wait for its word, but never forever
                let _ = status.set_nonblocking(false);
                let _ = status.set_read_timeout(Some(Duration::from_secs(5)));
                let mut bytes = [0u8; 8];
                match status.read_exact(&mut bytes) {
                    Ok(()) => forked_exit(pid, bytes),
                    Err(_) => killed,
                }
            }
        };
        self.exit = Some(info);
        info
    }
}

/// `multiprocessing`'s exit code: the exit status, or minus the signal that killed the process;
/// -1 when neither is known (the fork server went away without a word).
pub fn exitcode(info: ExitInfo) -> i32 {
    info.code.or(info.signal.map(|s| -s)).unwrap_or(-1)
}

fn exit_info(pid: u32, status: ExitStatus) -> ExitInfo {
    ExitInfo {
        pid,
        code: status.code(),
        signal: status.signal(),
    }
}

fn forked_exit(pid: u32, bytes: [u8; 8]) -> ExitInfo {
    let (code, signal) = crate::forkserver::decode_status(bytes);
    ExitInfo { pid, code, signal }
}

/// Whether the process behind `pidfd` has exited (its pidfd is readable).
fn has_exited(pidfd: &OwnedFd) -> bool {
    crate::fd::wait_ready(pidfd.as_raw_fd(), libc::POLLIN, Some(Duration::ZERO)).unwrap_or(true)
}

/// `Ok` for success and for `ESRCH` (the process has exited: nothing left to signal).
fn signal_result(rc: libc::c_long) -> io::Result<()> {
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    Ok(())
}

/// `kill(pid, signal)`; the caller holds `pid` reserved (module docs).
fn kill(pid: libc::pid_t, signal: i32) -> io::Result<()> {
    // SAFETY: kill only sends a signal and shares no memory; `pid` is positive and reserved for
    // the process meant (the module's invariant), so no other process can receive it.
    signal_result(libc::c_long::from(unsafe { libc::kill(pid, signal) }))
}

/// `killpg(pid, signal)`; the caller holds `pid` reserved (module docs).
fn killpg(pid: libc::pid_t, signal: i32) -> io::Result<()> {
    // SAFETY: as for `kill`: a signal only, to a group whose leader's pid is still reserved.
    signal_result(libc::c_long::from(unsafe { libc::killpg(pid, signal) }))
}

/// Sends `signal` to the process behind `pidfd`, which names that process and no other;
/// `ESRCH` (it has exited) is not an error.
fn pidfd_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal takes a pidfd we own, a signal number, no siginfo (null) and no
    // flags; it shares no memory with us.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    signal_result(rc)
}

/// Opens a descriptor that becomes readable when `pid` exits. The caller makes sure `pid` still
/// names the process meant: our unreaped child, or one the fork server cannot have reaped yet.
#[cfg(target_os = "linux")]
pub fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory is
    // shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::pid_t::try_from(pid).ok()?, 0) };
    if fd < 0 {
        return None;
    }
    let fd = RawFd::try_from(fd).ok()?;
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(not(target_os = "linux"))]
pub fn pidfd_open(_pid: u32) -> Option<OwnedFd> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn sleeper() -> ChildHandle {
        let mut command = Command::new("sleep");
        command.arg("60").process_group(0);
        ChildHandle::spawn(&mut command).unwrap()
    }

    #[test]
    fn a_killed_child_is_reaped_once_with_its_signal() {
        let mut child = sleeper();
        assert_eq!(child.try_reap().unwrap(), None);
        child.signal_group(libc::SIGKILL);
        let fd = child.exit_fd().expect("a pidfd on Linux");
        assert!(crate::fd::wait_ready(fd, libc::POLLIN, Some(Duration::from_secs(10))).unwrap());
        let info = child.try_reap().unwrap().expect("it has exited");
        assert_eq!((info.code, info.signal), (None, Some(libc::SIGKILL)));
        assert_eq!(exitcode(info), -libc::SIGKILL);
        // reaped: the pid is no longer ours, so nothing is sent, and asking again says the same
        assert!(child.signal(libc::SIGTERM).is_ok());
        assert_eq!(child.try_reap().unwrap(), Some(info));
    }

    #[test]
    fn a_closed_pidfd_still_lets_our_child_be_signalled() {
        let mut child = sleeper();
        child.close_pidfd();
        assert_eq!(child.exit_fd(), None);
        child.signal(libc::SIGTERM).unwrap();
        let info = child.kill_and_reap();
        assert_eq!(info.signal, Some(libc::SIGTERM));
    }

    #[test]
    fn a_forked_child_is_told_of_by_its_status_socket() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        // a pid of no process: no pidfd, so the handle never signals it
        let mut child = ChildHandle::forked(u32::MAX, ours, None).unwrap();
        assert_eq!(child.try_reap().unwrap(), None);
        assert!(child.signal(libc::SIGKILL).is_ok());
        drop(theirs); // the server went away without a word
        let info = child.try_reap().unwrap().unwrap();
        assert_eq!(exitcode(info), -1);
    }
}
