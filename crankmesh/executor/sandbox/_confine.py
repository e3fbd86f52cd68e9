"""Unprivileged confinement of one job process: Landlock and a seccomp filter.

Loaded by the fork-server (a clean interpreter that never imports ``crankmesh``) from its
own directory, so this module uses only the standard library and ``ctypes``.

- **Landlock** (Linux >= 5.13; TCP rules from ABI 4, signal and abstract-unix scoping from
  ABI 6): the job may read and execute only the paths its env profile needs (the
  interpreter, its libraries, ``/usr/bin`` tools, ``/dev/null`` & co, its own ``/proc``
  entry; all of its private ``/proc`` at ``STRICT``), and write
  only its own working directory (plus, at ``STRICT``, the private ``tmpfs`` mounts of its
  mount namespace). It may neither bind nor connect TCP sockets, nor signal or ``ptrace``
  a process outside its Landlock domain (the node, the fork-server, other jobs), nor reach
  an abstract unix socket created outside it.
- **seccomp** (through ``libseccomp``, resolved per architecture by the library itself, so
  no syscall table is kept here; the filter denies with ``EPERM``/``EACCES`` and kills on a
  foreign architecture): no ``socket()`` at all (UDP, raw, netlink, and unix sockets that
  could connect to a host daemon's socket file, none of which Landlock covers); only
  ``socketpair(AF_UNIX, SOCK_STREAM | SOCK_SEQPACKET)``, already connected, for pipes; no
  ``ptrace`` / ``process_vm_*`` / ``pidfd_getfd``, no new namespaces (``unshare``,
  ``setns``, ``clone`` with a ``CLONE_NEW*`` flag; ``clone3`` gets ``ENOSYS`` so the C
  library falls back to ``clone``), no mounts, no keyring, no ``bpf``,
  ``perf_event_open``, ``userfaultfd``, ``io_uring`` (whose operations bypass seccomp), kernel
  modules, ``kexec``, ``reboot``, swap, clock setting.

Both need ``no_new_privs`` (set by the caller first). Each is applied by the job process to
itself, after it dropped its privileges, and stays in force for everything it starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterable

# --------------------------------------------------------------------------- Landlock

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # same on all arches
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

#: Rights that apply to a file (a rule on a non-directory may hold only these).
_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_ONLY = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
READ_WRITE_DEVICE = FS_READ_FILE | FS_WRITE_FILE | FS_IOCTL_DEV

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The Landlock ABI version of this kernel; 0 when Landlock is absent or disabled."""
    ret = _lib().syscall(
        _SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)
    )
    return int(ret) if ret > 0 else 0


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def landlock_restrict(
    read_only: Iterable[str],
    read_write: Iterable[str],
    devices: Iterable[str] = (),
) -> dict[str, bool]:
    """Confine this process (and what it starts) with Landlock; return what is in force.

    ``read_only``: paths (directories or files) the process may read and execute;
    ``read_write``: directories it may also change; ``devices``: device files it may read,
    write and ``ioctl``. Missing paths are skipped. TCP bind/connect are denied (ABI >= 4),
    as are signals and abstract unix sockets across the domain boundary (ABI >= 6).

    Error handling: :class:`OSError` when Landlock is absent or the restriction fails; the
    caller decides whether that ends the job.
    """
    abi = landlock_abi()
    if abi < 1:
        raise OSError(errno.ENOSYS, "Landlock is not available on this kernel")
    handled = _fs_rights(abi)
    attr = _RulesetAttr(handled_access_fs=handled)
    size = 8
    if abi >= 4:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL
        size = 24
    lib = _lib()
    ruleset = int(lib.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0))
    if ruleset < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_create_ruleset: {os.strerror(err)}")
    try:
        rules = [(p, READ_ONLY) for p in read_only]
        rules += [(p, handled) for p in read_write]
        rules += [(p, READ_WRITE_DEVICE) for p in devices]
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # not on this host: nothing to allow
            try:
                if not os.path.isdir(f"/proc/self/fd/{fd}"):
                    access &= _FILE_RIGHTS
                rule = _PathBeneath(allowed_access=access & handled, parent_fd=fd)
                if lib.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                    err = ctypes.get_errno()
                    raise OSError(err, f"landlock_add_rule {path!r}: {os.strerror(err)}")
            finally:
                os.close(fd)
        if lib.syscall(_SYS_RESTRICT_SELF, ruleset, 0):
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_restrict_self: {os.strerror(err)}")
    finally:
        os.close(ruleset)
    return {
        "landlock_fs": True,
        "landlock_net": abi >= 4,
        "landlock_scope": abi >= 6,
    }


# --------------------------------------------------------------------------- seccomp

_ACT_ALLOW = 0x7FFF0000


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


_CMP_NE, _CMP_MASKED_EQ = 1, 7
AF_UNIX = 1
SOCK_DGRAM = 2
CLONE_NEW_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)

#: Denied with EPERM, whatever the arguments.
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "perf_event_open", "bpf", "userfaultfd",
    "keyctl", "add_key", "request_key",
    "mount", "umount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "unshare", "setns",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd",
    "iopl", "ioperm", "syslog", "vhangup", "uselib", "lookup_dcookie",
    "name_to_handle_at", "open_by_handle_at",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
)  # fmt: skip


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


_seccomp: ctypes.CDLL | None = None


def _libseccomp() -> ctypes.CDLL:
    global _seccomp
    if _seccomp is None:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        lib = ctypes.CDLL(name, use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        ]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        _seccomp = lib
    return _seccomp


def seccomp_available() -> bool:
    """Whether libseccomp can be loaded here."""
    try:
        _libseccomp()
    except OSError:
        return False
    return True


def seccomp_confine() -> None:
    """Load the job's seccomp filter into this process (see the module docstring).

    Error handling: :class:`OSError` when libseccomp is missing or the filter cannot load.
    """
    lib = _libseccomp()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    try:

        def rule(action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                return  # this architecture has no such syscall
            array = (_ArgCmp * max(len(cmps), 1))(*[_ArgCmp(*c) for c in cmps])
            ret = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
            if ret < 0:
                raise OSError(-ret, f"seccomp rule for {name}: {os.strerror(-ret)}")

        eperm = _act_errno(errno.EPERM)
        for name in DENIED_SYSCALLS:
            rule(eperm, name)
        rule(_act_errno(errno.ENOSYS), "clone3")  # flags live in memory: let libc use clone
        for flag in CLONE_NEW_FLAGS:
            rule(eperm, "clone", (0, _CMP_MASKED_EQ, flag, flag))
        # no socket() at all: Landlock does not mediate connecting to a named unix socket
        # (a host daemon's), so only already-connected unix stream pairs are left
        rule(_act_errno(errno.EACCES), "socket")
        rule(_act_errno(errno.EACCES), "socketpair", (0, _CMP_NE, AF_UNIX, 0))
        rule(_act_errno(errno.EACCES), "socketpair", (1, _CMP_MASKED_EQ, 0xF, SOCK_DGRAM))
        ret = lib.seccomp_load(ctx)
        if ret < 0:
            raise OSError(-ret, f"seccomp_load: {os.strerror(-ret)}")
    finally:
        lib.seccomp_release(ctx)
