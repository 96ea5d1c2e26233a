//! Where a data migration runs (docs/updater.md, "What a migration can
//! reach"). A migration comes signed in a bundle, but a signed program can
//! still be buggy or hostile: it must not reach past the data directories
//! it declared. It runs:
//!
//! - as the first process of a PID namespace of its own: when it exits or is
//!   killed (the runner kills it by its PID at a timeout, whatever process
//!   group it moved to), the kernel kills everything it started, children
//!   that called `setsid` or forked twice included; the process waiting in
//!   front of it kills it when the updater dies;
//! - in a private mount namespace where every mount is read-only, `nodev`
//!   and `nosuid`, except the data directories it declared, each opened
//!   beneath the data directory without following a symbolic link and bound
//!   writable; `/dev` is a fresh read-only tmpfs with only `null`, `zero`,
//!   `full`, `random`, `urandom` (a read-only mount does not stop writes to
//!   a device node, so the disk's nodes must be absent); `/proc` is a
//!   read-only proc of its own PID namespace; `/dev/shm` is a private
//!   tmpfs of 64 MiB for scratch (`TMPDIR` points there);
//! - in network and IPC namespaces of its own (the loopback only, up), and
//!   under a seccomp filter: sockets of the families `AF_INET`, `AF_INET6`
//!   and `AF_NETLINK` only (a path-named `AF_UNIX` socket, systemd's or
//!   D-Bus's, would let it ask a daemon to do what it may not; other
//!   families load modules), no `io_uring` (its operations bypass seccomp),
//!   no file handles (`open_by_handle_at` reaches the whole file system from
//!   a writable bind), no keyrings, BPF, perf, `userfaultfd`, `unshare`,
//!   `setns` or user namespaces; programs of another ABI get `ENOSYS`;
//! - with a capability bounding set of only `CHOWN`, `DAC_OVERRIDE`,
//!   `FOWNER`, `FSETID`, `KILL`, `SETGID` and `SETUID` (it runs as root and
//!   may hand files to an application's user), and `no_new_privs`: nothing
//!   that mounts, makes device nodes, loads modules, reboots, or changes the
//!   kernel;
//! - with every inherited descriptor but 0, 1 and 2 closed at exec.
//!
//! Health checks do not run here: they are the running release's own code,
//! from its own configuration, and must see the system as it is.
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
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

#[derive(Debug, Clone)]
pub struct Confinement {
    /// Every mount point of the caller's namespace, with the flags to keep.
    mounts: Vec<(CString, MsFlags)>,
    data_dir: CString,
    writable: Vec<Writable>,
    filter: Vec<libc::sock_filter>,
}

#[derive(Debug, Clone)]
struct Writable {
    /// Relative to the data directory, as declared.
    rel: CString,
    /// Where it is mounted (its own path).
    target: CString,
    /// `/proc/self/fd/N`: the directory as opened, the bind's source.
    source: CString,
    fd: RawFd,
}

/// Descriptors from here up hold the declared directories in the child.
const FIRST_DIR_FD: RawFd = 700;

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

/// Capabilities a migration keeps: CHOWN (0), DAC_OVERRIDE (1), FOWNER (3),
/// FSETID (4), KILL (5), SETGID (6), SETUID (7). Not DAC_READ_SEARCH (2):
/// with it, `open_by_handle_at` opens any inode of a file system.
const KEPT_CAPS: u64 = 0b1111_1011;

/// The child's PID, for the waiter's SIGTERM handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

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
fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Confinement {
    /// Everything read-only but `declared` (directories relative to
    /// `data_dir`, which must exist), and the rest of the list in the
    /// module's head.
    pub fn migration(data_dir: &Path, declared: &[String]) -> io::Result<Confinement> {
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
                    "noexec" => MsFlags::MS_NOEXEC,
                    "noatime" => MsFlags::MS_NOATIME,
                    "nodiratime" => MsFlags::MS_NODIRATIME,
                    "relatime" => MsFlags::MS_RELATIME,
                    _ => MsFlags::empty(),
                };
            }
            mounts.push((cstring(&unescape(point), Path::new(point))?, flags));
        }
        let writable = declared
            .iter()
            .enumerate()
            .map(|(i, rel)| {
                let fd = FIRST_DIR_FD + i as RawFd;
                let target = data_dir.join(rel);
                Ok(Writable {
                    rel: cstring(rel.as_bytes(), Path::new(rel))?,
                    target: cstring(target.as_os_str().as_bytes(), &target)?,
                    source: cstring(format!("/proc/self/fd/{fd}").as_bytes(), &target)?,
                    fd,
                })
            })
            .collect::<io::Result<_>>()?;
        Ok(Confinement {
            mounts,
            data_dir: cstring(data_dir.as_os_str().as_bytes(), data_dir)?,
            writable,
            filter: seccomp_filter(),
        })
    }

    /// In the child, before exec. Returns in the process that is to exec
    /// (the first of the new PID namespace); the process it was forked from
    /// stays behind to wait for it and pass on how it ended, after writing
    /// its PID (in the caller's namespace) to `report`.
    pub fn enter(&self, report: RawFd) -> io::Result<()> {
        // Everything from 3 up close-on-exec: the standard library's own
        // status pipe already is, and must stay open until the exec.
        close_from(3, true)?;
        unshare(
            CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWIPC,
        )?;
        wait_in_front(report)?;
        self.enter_view()?;
        loopback_up()?;
        self.drop_privileges()
    }

    fn enter_view(&self) -> io::Result<()> {
        let none: Option<&str> = None;
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
        // The declared directories, opened beneath the data directory with
        // no symbolic link followed (one swapped in since they were checked
        // cannot redirect the writable bind), in this namespace (a bind's
        // source must be in it).
        // SAFETY: open, openat2 and dup3 on prepared C strings.
        unsafe {
            let data = check(libc::open(
                self.data_dir.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            ) as libc::c_long)? as RawFd;
            for w in &self.writable {
                #[repr(C)]
                struct OpenHow {
                    flags: u64,
                    mode: u64,
                    resolve: u64,
                }
                const RESOLVE_NO_SYMLINKS: u64 = 0x04;
                const RESOLVE_BENEATH: u64 = 0x08;
                let how = OpenHow {
                    flags: (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
                    mode: 0,
                    resolve: RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH,
                };
                let fd = check(libc::syscall(
                    libc::SYS_openat2,
                    data,
                    w.rel.as_ptr(),
                    &how as *const OpenHow,
                    std::mem::size_of::<OpenHow>(),
                ))? as RawFd;
                check(libc::dup3(fd, w.fd, libc::O_CLOEXEC) as libc::c_long)?;
                libc::close(fd);
            }
            libc::close(data);
        }
        // Every mount read-only, without devices or set-id programs.
        let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked;
        for (point, keep) in &self.mounts {
            match mount(none, point.as_c_str(), none, ro | *keep, none) {
                // A mount hidden under another (or gone since) cannot be
                // reached by path, and then cannot be written either.
                Err(Errno::EINVAL | Errno::ENOENT) if point.as_bytes() != b"/" => {}
                r => r?,
            }
        }
        // Then the declared directories on top, writable.
        for w in &self.writable {
            let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
            mount(
                Some(w.source.as_c_str()),
                w.target.as_c_str(),
                none,
                bind,
                none,
            )?;
            let rw = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | locked;
            mount(none, w.target.as_c_str(), none, rw, none)?;
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
        let shm = nix::unistd::mkdir(c"/dev/shm", Mode::from_bits_truncate(0o1777));
        umask(old_mask);
        made?;
        shm?;
        for (target, link) in DEV_LINKS {
            nix::unistd::symlinkat(target, nix::fcntl::AT_FDCWD, link)?;
        }
        // Read-only, but not nodev: its few nodes must work.
        let ro_dev = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | devfs;
        mount(none, c"/dev", none, ro_dev, none)?;
        // Scratch space of its own (TMPDIR points here). Not over /tmp:
        // the data or the migration itself may live below it.
        mount(
            Some(c"tmpfs"),
            c"/dev/shm",
            Some(c"tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(c"mode=1777,size=64m"),
        )?;
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

    /// Capabilities, `no_new_privs` and the seccomp filter; see the
    /// module's head.
    fn drop_privileges(&self) -> io::Result<()> {
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
            let program = libc::sock_fprog {
                len: self.filter.len() as u16,
                filter: self.filter.as_ptr() as *mut libc::sock_filter,
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
}

/// Closes (or, with `on_exec`, marks close-on-exec) every descriptor from
/// `first` up: close_range where the kernel has it (5.9, 5.11 for the
/// flag), else one by one.
fn close_from(first: RawFd, on_exec: bool) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: u32 = 4;
    let flags = if on_exec { CLOSE_RANGE_CLOEXEC } else { 0 };
    // SAFETY: close_range, fcntl and close only change this process's
    // descriptor table.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, flags) == 0 {
            return Ok(());
        }
        if !matches!(Errno::last(), Errno::ENOSYS | Errno::EINVAL) {
            return Err(io::Error::last_os_error());
        }
        for fd in first..4096 {
            if on_exec {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            } else {
                libc::close(fd);
            }
        }
    }
    Ok(())
}

extern "C" fn kill_child(_: libc::c_int) {
    // SAFETY: kill and _exit are async-signal-safe.
    unsafe {
        let child = CHILD.load(Ordering::SeqCst);
        if child > 0 {
            libc::kill(child, libc::SIGKILL);
        }
        libc::_exit(137);
    }
}

/// Forks the first process of the new PID namespace, and makes this one
/// its waiter: it writes the child's PID to `report`, then exits as the
/// child does (or dies of the same signal), so the caller sees the
/// program's own end. If the updater dies first, the waiter gets SIGTERM
/// and kills the child, and with it the namespace. Returns only in the
/// child.
fn wait_in_front(report: RawFd) -> io::Result<()> {
    // SAFETY: sigaction with a handler that is async-signal-safe, prctl,
    // then fork in a child that has one thread; both sides only make
    // system calls until the exec or `_exit`.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = kill_child as extern "C" fn(libc::c_int) as usize;
        check(libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut()) as libc::c_long)?;
        // Set before the fork: no moment in which the updater's death
        // would go unnoticed.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) as libc::c_long)?;
        let child = libc::fork();
        if child == -1 {
            return Err(io::Error::last_os_error());
        }
        if child == 0 {
            // The waiter dies (killed at a timeout): so does this process,
            // and with it the whole namespace. Its own handler is no use
            // here, and exec resets it anyway.
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            return Ok(());
        }
        CHILD.store(child, Ordering::SeqCst);
        let pid = child.to_ne_bytes();
        libc::write(report, pid.as_ptr().cast(), pid.len());
        // The status pipe of std's spawn, the output pipe and `report`:
        // held open here they would make the updater wait for this process.
        let _ = close_from(0, false);
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

/// Brings the new network namespace's loopback up (it starts down), while
/// the capability to do so is still there.
fn loopback_up() -> io::Result<()> {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _rest: [u8; 22],
    }
    const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
    const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        _rest: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: a socket and two ioctls on a local ifreq.
    unsafe {
        let s = check(
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) as libc::c_long,
        )? as RawFd;
        let r = check(libc::ioctl(s, SIOCGIFFLAGS as _, &mut req) as libc::c_long).and_then(|_| {
            req.flags |= libc::IFF_UP as libc::c_short;
            check(libc::ioctl(s, SIOCSIFFLAGS as _, &req) as libc::c_long)
        });
        libc::close(s);
        r.map(drop)
    }
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

/// System calls a migration gets EPERM for (see the module's head).
const DENIED: [libc::c_long; 14] = [
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_process_vm_writev,
];
/// Socket families a migration may open.
const FAMILIES: [i32; 3] = [libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK];

/// The seccomp program, classic BPF (see the module's head for what it
/// refuses). Jumps go to labels, resolved once the program is laid out.
fn seccomp_filter() -> Vec<libc::sock_filter> {
    #[derive(Clone, Copy, PartialEq)]
    enum To {
        Next,
        Allow,
        Eperm,
        Enosys,
        Socket,
        Clone,
    }
    const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    // Offsets into struct seccomp_data: nr, arch, args[0] (its low half).
    let (nr, arch, arg0) = (0, 4, 16);
    let errno = |e: i32| libc::SECCOMP_RET_ERRNO | e as u32;
    let mut prog: Vec<(u16, To, To, u32)> = Vec::new();
    let mut labels: Vec<(To, usize)> = Vec::new();
    let op = |p: &mut Vec<(u16, To, To, u32)>, code, t, f, k| p.push((code, t, f, k));
    op(&mut prog, LD_ABS, To::Next, To::Next, arch);
    op(&mut prog, JEQ, To::Next, To::Enosys, AUDIT_ARCH);
    op(&mut prog, LD_ABS, To::Next, To::Next, nr);
    op(&mut prog, JGE, To::Enosys, To::Next, X32_BIT);
    for call in DENIED {
        op(&mut prog, JEQ, To::Eperm, To::Next, call as u32);
    }
    op(
        &mut prog,
        JEQ,
        To::Enosys,
        To::Next,
        libc::SYS_clone3 as u32,
    );
    op(
        &mut prog,
        JEQ,
        To::Socket,
        To::Next,
        libc::SYS_socket as u32,
    );
    op(&mut prog, JEQ, To::Clone, To::Next, libc::SYS_clone as u32);
    op(&mut prog, RET, To::Next, To::Next, libc::SECCOMP_RET_ALLOW);
    labels.push((To::Socket, prog.len()));
    op(&mut prog, LD_ABS, To::Next, To::Next, arg0);
    for family in FAMILIES {
        op(&mut prog, JEQ, To::Allow, To::Next, family as u32);
    }
    op(
        &mut prog,
        RET,
        To::Next,
        To::Next,
        errno(libc::EAFNOSUPPORT),
    );
    labels.push((To::Clone, prog.len()));
    // clone's flags are its first argument on x86-64 and aarch64 alike.
    op(&mut prog, LD_ABS, To::Next, To::Next, arg0);
    op(
        &mut prog,
        JSET,
        To::Eperm,
        To::Allow,
        libc::CLONE_NEWUSER as u32,
    );
    labels.push((To::Allow, prog.len()));
    op(&mut prog, RET, To::Next, To::Next, libc::SECCOMP_RET_ALLOW);
    labels.push((To::Eperm, prog.len()));
    op(&mut prog, RET, To::Next, To::Next, errno(libc::EPERM));
    labels.push((To::Enosys, prog.len()));
    op(&mut prog, RET, To::Next, To::Next, errno(libc::ENOSYS));
    let offset = |at: usize, to: To| -> u8 {
        if to == To::Next {
            return 0;
        }
        let target = labels
            .iter()
            .find(|(l, _)| *l == to)
            .map_or(at + 1, |&(_, i)| i);
        u8::try_from(target - at - 1).unwrap_or(u8::MAX)
    };
    prog.iter()
        .enumerate()
        .map(|(i, &(code, t, f, k))| libc::sock_filter {
            code,
            jt: offset(i, t),
            jf: offset(i, f),
            k,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape(r"/x\134y\9"), b"/x\\y\\9");
    }

    #[test]
    fn every_seccomp_jump_lands_inside_the_program_and_forward() {
        let prog = seccomp_filter();
        assert!(prog.len() < 64, "{}", prog.len());
        for (i, ins) in prog.iter().enumerate() {
            let is_jump = ins.code & libc::BPF_JMP as u16 != 0 && ins.code & 0x07 == 0x05;
            if is_jump {
                for off in [ins.jt, ins.jf] {
                    assert!(
                        i + 1 + (off as usize) < prog.len(),
                        "jump at {i} leaves the program"
                    );
                }
            }
        }
        // The last three are the shared returns: allow, EPERM, ENOSYS.
        let rets: Vec<u32> = prog[prog.len() - 3..].iter().map(|i| i.k).collect();
        assert_eq!(
            rets,
            [
                libc::SECCOMP_RET_ALLOW,
                libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
                libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
            ]
        );
    }
}
