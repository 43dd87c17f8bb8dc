"""Hand-written seccomp filters (classic BPF): the sandbox's network filter and the runners' clone filter.

:func:`deny_network` takes the network away from executed code: ``socket()`` only for ``AF_UNIX``, no
``io_uring``. Landlock covers TCP only (ABI >= 4); this filter also stops UDP, raw and packet sockets, the way
Codex's Linux sandbox does. ``io_uring_setup`` is refused because io_uring can create sockets without the
``socket`` system call. System calls of a foreign ABI (i386 or x32 on x86_64) are refused altogether,
since the filter checks syscall numbers of the native ABI only.

:func:`deny_clone_parent` keeps a session's processes in its runner's tree: ``clone`` with ``CLONE_PARENT`` (the
child would be the *runner's parent's* child, a sibling of the runner outside the tree the limits monitor walks)
fails with ``EPERM``, so does ``prctl(PR_SET_CHILD_SUBREAPER, 0)`` (a runner is its tree's subreaper: without that,
a grandchild whose parent exits goes to init), so does ``prlimit64`` setting another process's limits (a pid other than
0 with a new limit: the same user's processes, the daemon's and other sessions' among them, are otherwise open to it,
and an ``RLIMIT_CPU`` of one second killed the daemon, an ``RLIMIT_NOFILE`` at its open count made its next
connection end it; an attack review), and ``clone3`` fails with ``ENOSYS`` (its flags are in memory, which
a seccomp filter cannot read; glibc then falls back to ``clone``, as under Docker's default profile). The template
installs it before it forks anything, so every runner, spare and workflow check inherits it. It must not break what
runners run, so foreign ABIs are not refused here but checked with their own numbers (i386 and x32 on x86_64,
32-bit ARM on aarch64).

:func:`keep_process_group` is for workflow checks (:mod:`labd.runner.checks`): ``setsid`` and ``setpgid`` return
0 without doing anything, so every process a user module starts while it is imported stays in its check's process
group, which the template kills when the check ends (a module that daemonizes a helper still imports: it believes it
left the group).

Standard library only (ctypes), like :mod:`landlock`: loaded by the exec helper with ``python -I -S``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

__all__ = ["deny_network", "deny_clone_parent", "keep_process_group", "supported", "SeccompError"]

_ARCH = {  # machine -> (AUDIT_ARCH_*, socket nr, io_uring_setup nr, x32 bit or 0)
    "x86_64": (0xC000003E, 41, 425, 0x40000000),
    "aarch64": (0xC00000B7, 198, 425, 0),
}
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000
_EPERM, _EACCES, _ENOSYS = 1, 13, 38
_AF_UNIX = 1
_CLONE_PARENT = 0x00008000
#: machine -> the ABIs a process may call in: (AUDIT_ARCH_*, clone nrs, clone3 nrs, prctl nrs), native first. x32
#: calls carry the AUDIT_ARCH_X86_64 arch and their number with bit 30 set (clone, clone3 and prctl are "common"
#: entries: same number)
_CLONE_ABIS: dict[str, list[tuple[int, list[int], list[int], list[int]]]] = {
    "x86_64": [(0xC000003E, [56, 0x40000000 | 56], [435, 0x40000000 | 435], [157, 0x40000000 | 157]),  # + x32
               (0x40000003, [120], [435], [172])],                                                    # i386
    "aarch64": [(0xC00000B7, [220], [435], [167]),
                (0x40000028, [120], [435], [172])],                                                   # 32-bit ARM
}
_PR_SET_CHILD_SUBREAPER = 36
#: arch -> the prlimit64 numbers of that ABI (x32's: bit 30 set; prlimit64 is a "common" entry)
_PRLIMIT_NRS: dict[int, list[int]] = {0xC000003E: [302, 0x40000000 | 302], 0x40000003: [340],
                                      0xC00000B7: [261], 0x40000028: [369]}
#: machine -> (AUDIT_ARCH_*, [setpgid and setsid nrs]) for each ABI it runs, native first (x32: bit 30 set)
_GROUP_ABIS: dict[str, list[tuple[int, list[int]]]] = {
    "x86_64": [(0xC000003E, [109, 112, 0x40000000 | 109, 0x40000000 | 112]), (0x40000003, [57, 66])],
    "aarch64": [(0xC00000B7, [154, 157]), (0x40000028, [57, 66])],
}
#: the seccomp system call, for SECCOMP_FILTER_FLAG_TSYNC (prctl installs on the calling thread only)
_NR_SECCOMP = {"x86_64": 317, "aarch64": 277}


class SeccompError(OSError):
    """The filter could not be installed."""


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def supported() -> bool:
    """True on the architectures whose system call numbers this module knows."""
    return platform.machine() in _ARCH


def _program() -> bytes:
    arch, nr_socket, nr_uring, x32 = _ARCH[platform.machine()]
    deny_foreign = _ERRNO | _ENOSYS
    deny_net = _ERRNO | _EACCES
    ins: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, 4),                 # 0: A = arch
        (_JEQ_K, 1, 0, arch),                 # 1: native ABI? skip the refusal
        (_RET_K, 0, 0, deny_foreign),         # 2
        (_LD_W_ABS, 0, 0, 0),                 # 3: A = syscall nr
    ]
    if x32:
        ins += [(_JGE_K, 0, 1, x32), (_RET_K, 0, 0, deny_foreign)]  # x32 syscalls carry this bit
    ins += [
        (_JEQ_K, 0, 1, nr_uring),             # io_uring_setup -> refuse
        (_RET_K, 0, 0, deny_net),
        (_JEQ_K, 1, 0, nr_socket),            # socket -> check its family
        (_RET_K, 0, 0, _ALLOW),
        (_LD_W_ABS, 0, 0, 16),                # A = low 32 bits of args[0] (the family; little endian)
        (_JEQ_K, 0, 1, _AF_UNIX),
        (_RET_K, 0, 0, _ALLOW),
        (_RET_K, 0, 0, deny_net),
    ]
    return b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in ins)


def deny_network() -> None:
    """Install the filter on the calling thread (inherited by children and kept across exec).
    Needs no-new-privs (set here) unless the caller has CAP_SYS_ADMIN."""
    if not supported():
        raise SeccompError(95, f"no seccomp filter for {platform.machine()}")
    _install(_program(), all_threads=False)


Ins = tuple[int, int | str, int | str, int]


def _assemble(ins: list[Ins | str]) -> bytes:
    """Classic BPF from instructions whose jump offsets may name a label (a ``str`` item marks its place)."""
    where: dict[str, int] = {}
    code: list[Ins] = []
    for item in ins:
        if isinstance(item, str):
            where[item] = len(code)
        else:
            code.append(item)
    out = []
    for i, (op, jt, jf, k) in enumerate(code):
        t = where[jt] - i - 1 if isinstance(jt, str) else jt
        f = where[jf] - i - 1 if isinstance(jf, str) else jf
        out.append(struct.pack("=HBBI", op, t, f, k))
    return b"".join(out)


def _clone_program(machine: str) -> bytes:
    """``clone`` with CLONE_PARENT -> EPERM, ``clone3`` -> ENOSYS, ``prctl(PR_SET_CHILD_SUBREAPER, 0)`` -> EPERM,
    ``prlimit64(pid != 0, ..., new != NULL, ...)`` -> EPERM, in every ABI the machine runs; the rest allowed. The
    flags are ``clone``'s first argument in all of them (low 32 bits at offset 16: little endian), prctl's option its
    first and the value its second (offset 24), prlimit64's pid its first and the new limit its third (offset 32, its
    high half at 36). Reading another process's limits stays allowed (``prlimit --pid``); setting one's own with its
    pid instead of 0 is refused too (glibc's ``setrlimit`` passes 0)."""
    abis = _CLONE_ABIS[machine]
    ins: list[Ins | str] = [(_LD_W_ABS, 0, 0, 4)]  # A = arch
    ins += [(_JEQ_K, f"abi{i}", 0, arch) for i, (arch, _c, _c3, _p) in enumerate(abis)]
    ins.append((_RET_K, 0, 0, _ERRNO | _ENOSYS))  # an ABI this machine has no business with
    for i, (_arch, clones, clone3s, prctls) in enumerate(abis):
        ins += [f"abi{i}", (_LD_W_ABS, 0, 0, 0)]  # A = syscall nr
        ins += [(_JEQ_K, "nosys", 0, nr) for nr in clone3s]
        ins += [(_JEQ_K, "flags", 0, nr) for nr in clones]
        ins += [(_JEQ_K, "prctl", 0, nr) for nr in prctls]
        ins += [(_JEQ_K, "prlimit", 0, nr) for nr in _PRLIMIT_NRS.get(_arch, [])]
        ins.append((_RET_K, 0, 0, _ALLOW))
    # prctl(PR_SET_CHILD_SUBREAPER, 0): a runner is its tree's subreaper (orphans come back to it); unsetting that
    # would let a grandchild whose parent exits be re-parented to init, out of the tree (an attack review)
    ins += ["prctl", (_LD_W_ABS, 0, 0, 16), (_JEQ_K, 0, "allow", _PR_SET_CHILD_SUBREAPER),
            (_LD_W_ABS, 0, 0, 24), (_JEQ_K, "perm", "allow", 0)]
    ins += ["prlimit", (_LD_W_ABS, 0, 0, 16), (_JEQ_K, "allow", 0, 0),  # pid 0: the caller's own
            (_LD_W_ABS, 0, 0, 32), (_JEQ_K, 0, "perm", 0),  # a new limit (not NULL): refused
            (_LD_W_ABS, 0, 0, 36), (_JEQ_K, "allow", "perm", 0)]
    ins += ["flags", (_LD_W_ABS, 0, 0, 16), (_JSET_K, "perm", 0, _CLONE_PARENT),
            "allow", (_RET_K, 0, 0, _ALLOW),
            "perm", (_RET_K, 0, 0, _ERRNO | _EPERM),
            "nosys", (_RET_K, 0, 0, _ERRNO | _ENOSYS)]
    return _assemble(ins)


def deny_clone_parent() -> None:
    """Install the clone filter (module docstring) on every thread of the calling process, inherited by all it
    forks and kept across exec. Sets no-new-privs (seccomp needs it without CAP_SYS_ADMIN): setuid programs the
    process runs later do not gain privileges (as under Landlock, which needs it too)."""
    if not supported():
        raise SeccompError(95, f"no seccomp filter for {platform.machine()}")
    _install(_clone_program(platform.machine()), all_threads=True)


def _group_program(machine: str) -> bytes:
    """``setpgid`` and ``setsid`` -> 0 (RET_ERRNO with errno 0: the call is skipped and returns 0), in every ABI
    the machine runs; the rest allowed (an ABI it does not run is refused by the clone filter already)."""
    ins: list[Ins | str] = [(_LD_W_ABS, 0, 0, 4)]  # A = arch
    ins += [(_JEQ_K, f"abi{i}", 0, arch) for i, (arch, _nrs) in enumerate(_GROUP_ABIS[machine])]
    ins.append((_RET_K, 0, 0, _ALLOW))
    for i, (_arch, nrs) in enumerate(_GROUP_ABIS[machine]):
        ins += [f"abi{i}", (_LD_W_ABS, 0, 0, 0)]  # A = syscall nr
        ins += [(_JEQ_K, "skip", 0, nr) for nr in nrs]
        ins.append((_RET_K, 0, 0, _ALLOW))
    ins += ["skip", (_RET_K, 0, 0, _ERRNO | 0)]
    return _assemble(ins)


def keep_process_group() -> None:
    """Install the process-group filter (module docstring) on every thread of the calling process, inherited by
    all it forks and kept across exec."""
    if not supported():
        raise SeccompError(95, f"no seccomp filter for {platform.machine()}")
    _install(_group_program(platform.machine()), all_threads=True)


def _install(code: bytes, all_threads: bool) -> None:
    """Set no-new-privs and install the BPF program ``code``: on the calling thread (``prctl``), or with
    ``all_threads`` on every thread of the process (``seccomp(2)`` with SECCOMP_FILTER_FLAG_TSYNC)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        err = ctypes.get_errno()
        raise SeccompError(err, f"PR_SET_NO_NEW_PRIVS: {os.strerror(err)}")
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _Fprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if all_threads:
        # SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC; > 0: the id of a thread that could not be synced
        rc = libc.syscall(ctypes.c_long(_NR_SECCOMP[platform.machine()]), ctypes.c_uint(1), ctypes.c_uint(1),
                          ctypes.byref(prog))
        if rc != 0:
            err = ctypes.get_errno() if rc < 0 else 16  # EBUSY: a thread has a filter that is not ours
            raise SeccompError(err, f"seccomp(SECCOMP_SET_MODE_FILTER, TSYNC): {os.strerror(err)}")
        return
    if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        err = ctypes.get_errno()
        raise SeccompError(err, f"PR_SET_SECCOMP: {os.strerror(err)}")
