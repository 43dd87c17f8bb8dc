"""The runners' clone filter (runner/sandbox/seccomp.py, deny_clone_parent), installed in a child process: clone
with CLONE_PARENT fails with EPERM and clone3 with ENOSYS in the native ABI and in i386's (int 0x80), on every
thread, while threads, fork, subprocess and multiprocessing (fork, spawn, forkserver) keep working."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64",
                                reason="the probe makes raw system calls by their x86_64 and i386 numbers")

PROBE = r'''
import ctypes, mmap, multiprocessing, os, subprocess, threading, time
from labd.runner.sandbox import seccomp

libc = ctypes.CDLL(None, use_errno=True)

def clone(flags):
    pid = libc.syscall(56, flags, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    if pid > 0:
        os.waitpid(pid, 0)
        return "ok"
    return os.strerror(ctypes.get_errno())

def int80(nr, arg):  # an i386 system call from this 64-bit process
    code = (b"\x53\xb8" + nr.to_bytes(4, "little") + b"\xbb" + arg.to_bytes(4, "little")
            + b"\x31\xc9\x31\xd2\x31\xf6\x31\xff\xcd\x80\x5b\xc3")
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    m.write(code)
    r = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))()
    if r == 0:
        os._exit(0)
    if r > 0:
        os.waitpid(r, 0)
        return "ok"
    return os.strerror(-r)

def int80_3(nr, a, b, c):  # an i386 system call with three arguments (ebx, ecx, edx)
    code = (b"\x53\xb8" + nr.to_bytes(4, "little") + b"\xbb" + a.to_bytes(4, "little") + b"\xb9"
            + b.to_bytes(4, "little") + b"\xba" + c.to_bytes(4, "little") + b"\x31\xf6\x31\xff\xcd\x80\x5b\xc3")
    m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    m.write(code)
    r = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))()
    return "ok" if r >= 0 else os.strerror(-r)

def prlimit(pid, new):  # prlimit64(pid, RLIMIT_NOFILE, new, NULL)
    r = libc.syscall(302, pid, 7, new, None)
    return "ok" if r == 0 else os.strerror(ctypes.get_errno())

def double(x):
    return 2 * x

if __name__ == "__main__":
    early = {}
    gate = threading.Event()
    t = threading.Thread(target=lambda: (gate.wait(), early.update(r=clone(0x8000 | 17))))
    t.start()  # a thread that exists before the filter: synced too
    seccomp.deny_clone_parent()
    gate.set()
    t.join()
    print("parent", clone(0x8000 | 17))
    print("early-thread", early["r"])
    print("plain", clone(17))
    print("clone3", libc.syscall(435, 0, 0) == -1 and os.strerror(ctypes.get_errno()))
    print("i386-parent", int80(120, 0x8000 | 17))
    print("i386-plain", int80(120, 17))
    print("i386-clone3", int80(435, 0))
    print("subreaper-on", libc.prctl(36, 1, 0, 0, 0))
    print("subreaper-off", libc.prctl(36, 0, 0, 0, 0) == -1 and os.strerror(ctypes.get_errno()))
    print("other-prctl", libc.prctl(15, b"probe", 0, 0, 0))  # PR_SET_NAME
    other = os.fork()  # another process of the same user (the daemon, another session's runner)
    if other == 0:
        time.sleep(60)
        os._exit(0)
    import resource
    same = resource.getrlimit(resource.RLIMIT_NOFILE)  # set to what it is: harmless if the filter let it through
    limit = (ctypes.c_ulonglong * 2)(*same)
    print("prlimit-other-set", prlimit(other, ctypes.byref(limit)))
    print("prlimit-other-read", prlimit(other, None))
    print("prlimit-self-set", prlimit(0, ctypes.byref(limit)))
    try:
        resource.prlimit(other, resource.RLIMIT_NOFILE, same)
        print("resource.prlimit-other", "ok")
    except OSError as exc:
        print("resource.prlimit-other", exc.strerror)
    resource.setrlimit(resource.RLIMIT_NOFILE, same)
    print("setrlimit", "ok")
    print("i386-prlimit-other-set", int80_3(340, other, 7, 0x1000))  # refused before the pointer is read
    print("i386-prlimit-other-read", int80_3(340, other, 7, 0))
    os.kill(other, 9)
    os.waitpid(other, 0)
    print("subprocess", subprocess.run(["true"]).returncode)
    pid = os.fork()
    if pid == 0:
        os._exit(5)
    print("os.fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    for method in ("fork", "spawn", "forkserver"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            print(method, sum(pool.map(double, [1, 2, 3])))
'''


def test_clone_parent_and_clone3_are_refused_and_the_rest_works(tmp_path) -> None:
    """In every ABI and on every thread, the filter refuses exactly what it must (clone with CLONE_PARENT, clone3,
    giving up being a subreaper, which would send orphans to init, setting another process's limits with prlimit,
    which killed the daemon with an RLIMIT_CPU of one second); becoming one, other prctl options, reading another
    process's limits, setting one's own, and ordinary process creation work under it."""
    (tmp_path / "probe.py").write_text(PROBE)
    out = subprocess.run([sys.executable, str(tmp_path / "probe.py")], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert got == {"parent": "Operation not permitted", "early-thread": "Operation not permitted", "plain": "ok",
                   "clone3": "Function not implemented", "i386-parent": "Operation not permitted",
                   "i386-plain": "ok", "i386-clone3": "Function not implemented",
                   "subreaper-on": "0", "subreaper-off": "Operation not permitted", "other-prctl": "0",
                   "prlimit-other-set": "Operation not permitted", "prlimit-other-read": "ok", "prlimit-self-set": "ok",
                   "resource.prlimit-other": "Operation not permitted", "setrlimit": "ok",
                   "i386-prlimit-other-set": "Operation not permitted", "i386-prlimit-other-read": "ok",
                   "subprocess": "0", "os.fork": "5",
                   "fork": "12", "spawn": "12", "forkserver": "12"}
