"""A seccomp filter that takes the network away: ``socket()`` only for ``AF_UNIX``, no ``io_uring``.

Landlock covers TCP only (ABI >= 4); this filter also stops UDP, raw and packet sockets, the way Codex's
Linux sandbox does. ``io_uring_setup`` is refused because io_uring can create sockets without the
``socket`` system call. System calls of a foreign ABI (i386 or x32 on x86_64) are refused altogether,
since the filter checks syscall numbers of the native ABI only.

Standard library only (ctypes), like :mod:`landlock`: loaded by the exec helper with ``python -I -S``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

__all__ = ["deny_network", "supported", "SeccompError"]

_ARCH = {  # machine -> (AUDIT_ARCH_*, socket nr, io_uring_setup nr, x32 bit or 0)
    "x86_64": (0xC000003E, 41, 425, 0x40000000),
    "aarch64": (0xC00000B7, 198, 425, 0),
}
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000
_EACCES, _ENOSYS = 13, 38
_AF_UNIX = 1


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
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        err = ctypes.get_errno()
        raise SeccompError(err, f"PR_SET_NO_NEW_PRIVS: {os.strerror(err)}")
    code = _program()
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _Fprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        err = ctypes.get_errno()
        raise SeccompError(err, f"PR_SET_SECCOMP: {os.strerror(err)}")
