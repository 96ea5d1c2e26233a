//! Where the updater's children run (docs/updater.md, "What a migration can
//! reach"). A data migration comes signed in a bundle, but a signed program
//! can still be buggy or hostile; it must not reach past the directories it
//! declared. It runs:
//!
//! - as the first process of a PID namespace of its own: when it exits or is
//!   killed, the kernel kills everything it started, children that called
//!   `setsid` or forked twice included;
//! - in a private mount namespace where every mount is read-only except the
//!   data directories it declared; `/dev` is a fresh read-only tmpfs with
//!   only `null`, `zero`, `full`, `random`, `urandom` (a read-only mount does
//!   not stop writes to a device node, so the disk's nodes must be absent);
//!   `/proc` is a read-only proc of its own PID namespace;
//! - in network and IPC namespaces of its own (a loopback only, no abstract
//!   sockets or System V IPC of the host), and without `socket(AF_UNIX)` or
//!   `io_uring` (seccomp): a path-named socket (systemd's, D-Bus) would
//!   let it ask a daemon to do what it may not;
//! - with a capability bounding set of only file ownership and permissions,
//!   `setuid`/`setgid` (to drop to an application's user) and `kill`, and
//!   `no_new_privs`: nothing that mounts, makes device nodes, loads modules,
//!   reboots, or changes the kernel;
//! - with every inherited descriptor but 0, 1 and 2 closed at exec.
//!
//! A health check gets only the PID namespace and the closed descriptors
//! ([`Confinement::check`]): it is the running release's own code, from its
//! own configuration, and must see the system as it is.
//!
//! Everything is prepared before the fork ([`Confinement::migration`]); the
//! child only makes system calls ([`Confinement::enter`]), as it must
//! between fork and exec in a threaded process. Needs root, as the updater
//! has on a device.

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{makedev, mknod, umask, Mode, SFlag};
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Confinement {
    /// The file system view and privileges of a migration; `None` for a check.
    view: Option<View>,
}

#[derive(Debug, Clone)]
struct View {
    /// Every mount point of the caller's namespace, with the flags to keep.
    mounts: Vec<(CString, MsFlags)>,
    writable: Vec<CString>,
}

/// The only device nodes a migration sees: (path, major, minor).
const DEVICES: [(&CStr, u64, u64); 5] = [
    (c"/dev/null", 1, 3),
    (c"/dev/zero", 1, 5),
    (c"/dev/full", 1, 7),
    (c"/dev/random", 1, 8),
    (c"/dev/urandom", 1, 9),
];
const DEV_LINKS: [(&CStr, &CStr); 4] = [
    (c"/proc/self/fd", c"/dev/fd"),
    (c"/proc/self/fd/0", c"/dev/stdin"),
    (c"/proc/self/fd/1", c"/dev/stdout"),
    (c"/proc/self/fd/2", c"/dev/stderr"),
];

/// Capabilities a migration keeps: CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH,
/// FOWNER, FSETID, KILL, SETGID, SETUID (bits 0 to 7).
const KEPT_CAPS: u64 = 0xff;

/// `\040`-style escapes of /proc/self/mountinfo.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

fn cstring(bytes: &[u8], what: &Path) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has a NUL byte", what.display()),
        )
    })
}

/// The result of a raw system call, as `io::Result`.
fn check(r: libc::c_long) -> io::Result<()> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Confinement {
    /// For a health check: its own PID namespace, nothing else.
    pub fn check() -> Confinement {
        Confinement { view: None }
    }

    /// For a migration: everything read-only but `writable` (directories
    /// that must exist), and the rest of the list in the module's head.
    pub fn migration(writable: &[PathBuf]) -> io::Result<Confinement> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mut mounts = Vec::new();
        for line in info.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let (Some(point), Some(opts)) = (fields.get(4), fields.get(5)) else {
                continue;
            };
            let mut flags = MsFlags::empty();
            for o in opts.split(',') {
                flags |= match o {
                    "nosuid" => MsFlags::MS_NOSUID,
                    "nodev" => MsFlags::MS_NODEV,
                    "noexec" => MsFlags::MS_NOEXEC,
                    "noatime" => MsFlags::MS_NOATIME,
                    "nodiratime" => MsFlags::MS_NODIRATIME,
                    "relatime" => MsFlags::MS_RELATIME,
                    _ => MsFlags::empty(),
                };
            }
            mounts.push((cstring(&unescape(point), Path::new(point))?, flags));
        }
        let writable = writable
            .iter()
            .map(|p| cstring(p.as_os_str().as_bytes(), p))
            .collect::<io::Result<_>>()?;
        Ok(Confinement {
            view: Some(View { mounts, writable }),
        })
    }

    /// In the child, before exec. Returns in the process that is to exec
    /// (the first of the new PID namespace); the process it was forked from
    /// stays behind to wait for it and pass on how it ended.
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: close_range only changes this process's descriptor flags.
        // Everything from 3 up is marked close-on-exec: the standard library's
        // own status pipe already is, and must stay open until the exec.
        let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32) };
        // CLOSE_RANGE_CLOEXEC (4) needs Linux 5.11; older kernels keep the
        // descriptors, which std opens close-on-exec anyway.
        if r == -1 && !matches!(Errno::last(), Errno::ENOSYS | Errno::EINVAL) {
            return Err(io::Error::last_os_error());
        }
        let mut flags = CloneFlags::CLONE_NEWPID;
        if self.view.is_some() {
            flags |= CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC;
        }
        unshare(flags)?;
        wait_in_front()?;
        if let Some(view) = &self.view {
            view.enter()?;
            drop_privileges()?;
        }
        Ok(())
    }
}

/// Forks the first process of the new PID namespace, and makes this one
/// its waiter: it exits as the child does, or dies of the same signal, so
/// the caller sees the program's own end. Returns only in the child.
fn wait_in_front() -> io::Result<()> {
    // SAFETY: fork in a child that has one thread; both sides only make
    // system calls until the exec or `_exit`.
    let child = unsafe { libc::fork() };
    if child == -1 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        // The waiter dies (killed at a timeout, or with the updater): so
        // does this process, and with it the whole namespace.
        // SAFETY: plain system calls.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
        return Ok(());
    }
    // SAFETY: from here on, only system calls on local data, then _exit.
    unsafe {
        // Dies with the updater, so no migration outlives it.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        // The status pipe of std's spawn, and the output pipe: held open
        // here they would make the updater wait for this process.
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        let mut status = 0;
        loop {
            let r = libc::waitpid(child, &mut status, 0);
            if r == child {
                break;
            }
            if r == -1 && Errno::last() != Errno::EINTR {
                libc::_exit(127);
            }
        }
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        let signal = libc::WTERMSIG(status);
        libc::signal(signal, libc::SIG_DFL);
        libc::kill(libc::getpid(), signal);
        libc::_exit(128 + signal)
    }
}

impl View {
    fn enter(&self) -> io::Result<()> {
        let none: Option<&str> = None;
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
        // The writable directories first, as bind mounts of themselves: a
        // bind mount takes the flags of its source, so it must be made
        // before the sources turn read-only.
        for dir in &self.writable {
            mount(
                Some(dir.as_c_str()),
                dir.as_c_str(),
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            )?;
        }
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        for (point, keep) in &self.mounts {
            match mount(none, point.as_c_str(), none, ro | *keep, none) {
                // A mount hidden under another (or gone since) cannot be
                // reached by path, and then cannot be written either.
                Err(Errno::EINVAL | Errno::ENOENT) if point.as_bytes() != b"/" => {}
                r => r?,
            }
        }
        // A fresh /dev over the old one (and everything mounted under it).
        let devfs = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
        mount(
            Some(c"tmpfs"),
            c"/dev",
            Some(c"tmpfs"),
            devfs,
            Some(c"mode=0755,size=64k"),
        )?;
        let old_mask = umask(Mode::empty());
        let made = DEVICES.iter().try_for_each(|(path, major, minor)| {
            mknod(
                *path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(*major, *minor),
            )
        });
        umask(old_mask);
        made?;
        for (target, link) in DEV_LINKS {
            nix::unistd::symlinkat(target, nix::fcntl::AT_FDCWD, link)?;
        }
        mount(none, c"/dev", none, ro | devfs, none)?;
        // This namespace's processes only, and nothing in it writable
        // (/proc/sys, /proc/sysrq-trigger).
        let procfs =
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
        match mount(Some(c"proc"), c"/proc", Some(c"proc"), procfs, none) {
            Err(Errno::ENOENT) => {}
            r => r?,
        }
        Ok(())
    }
}

/// Capabilities, `no_new_privs` and the seccomp filter; see the module's head.
fn drop_privileges() -> io::Result<()> {
    // SAFETY: prctl and capset on this process, with local data.
    unsafe {
        for cap in 0..64 {
            if KEPT_CAPS & (1 << cap) != 0 {
                continue;
            }
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) == -1 {
                // Past the kernel's last capability.
                if Errno::last() == Errno::EINVAL {
                    break;
                }
                return Err(io::Error::last_os_error());
            }
        }
        let clear_all = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
        check(libc::prctl(libc::PR_CAP_AMBIENT, clear_all, 0, 0, 0) as libc::c_long)?;
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        // _LINUX_CAPABILITY_VERSION_3: two 32-bit words of each set.
        let header = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let kept = KEPT_CAPS as u32;
        let data = [
            Data {
                effective: kept,
                permitted: kept,
                inheritable: 0,
            },
            Data {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
        ];
        check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as libc::c_long)?;
        let filter = seccomp_filter();
        let program = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        check(libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &program as *const libc::sock_fprog as libc::c_ulong,
            0,
            0,
        ) as libc::c_long)?;
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
/// x32 system calls on x86-64 carry this bit; none exists on aarch64.
#[cfg(target_arch = "x86_64")]
const X32_BIT: u32 = 0x4000_0000;
#[cfg(not(target_arch = "x86_64"))]
const X32_BIT: u32 = u32::MAX;

/// A classic BPF program for seccomp: system calls of another ABI fail
/// with ENOSYS, `io_uring_setup` too (its operations bypass seccomp), and
/// `socket(AF_UNIX, ...)` with EACCES; everything else is allowed.
fn seccomp_filter() -> [libc::sock_filter; 12] {
    const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    // Offsets into struct seccomp_data: nr, arch, args[0] (its low half).
    let (nr, arch, arg0) = (0, 4, 16);
    let errno = |e: i32| libc::SECCOMP_RET_ERRNO | e as u32;
    [
        op(LD_ABS, 0, 0, arch),
        op(JEQ, 1, 0, AUDIT_ARCH),
        op(RET, 0, 0, errno(libc::ENOSYS)),
        op(LD_ABS, 0, 0, nr),
        op(JGE, 6, 0, X32_BIT),
        op(JEQ, 5, 0, libc::SYS_io_uring_setup as u32),
        op(JEQ, 0, 3, libc::SYS_socket as u32),
        op(LD_ABS, 0, 0, arg0),
        op(JEQ, 0, 1, libc::AF_UNIX as u32),
        op(RET, 0, 0, errno(libc::EACCES)),
        op(RET, 0, 0, libc::SECCOMP_RET_ALLOW),
        op(RET, 0, 0, errno(libc::ENOSYS)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape(r"/x\134y\9"), b"/x\\y\\9");
    }
}
