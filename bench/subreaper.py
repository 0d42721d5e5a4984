#!/usr/bin/env python3
"""Runs argv as a child subreaper, so /usr/bin/time counts every descendant's CPU.

A daemon the command starts (pg_ctl's postmaster of a throwaway cluster, a gpg-agent) is
reparented to the nearest subreaper instead of init: waiting for it here adds its rusage to this
process's children, which /usr/bin/time reports. After the command exits, orphans are waited for
up to BENCH_REAP_GRACE seconds (default 0.5); one still alive then (a gpg-agent) is left running
and its CPU is not counted. The command's own wall time (fork to its exit, without that grace) is
written in ms to $BENCH_WALL_FILE when set. Exits with the command's status.
"""
import ctypes
import os
import sys
import time

PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    argv = sys.argv[1:]
    if not argv:
        print("usage: subreaper.py COMMAND [ARG...]", file=sys.stderr)
        return 2
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except OSError:
        pass  # not Linux: still runs the command, orphans are just not counted
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    ended = time.monotonic()
    code = os.waitstatus_to_exitcode(status)
    wall_file = os.environ.get("BENCH_WALL_FILE")
    if wall_file:
        with open(wall_file, "w") as f:
            f.write(f"{(ended - started) * 1000:.1f}\n")
    deadline = ended + float(os.environ.get("BENCH_REAP_GRACE", "0.5"))
    while time.monotonic() < deadline:
        try:
            reaped, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break  # no children left
        if reaped == 0:
            time.sleep(0.02)
    if code < 0:
        return 128 - code
    return code


if __name__ == "__main__":
    sys.exit(main())
