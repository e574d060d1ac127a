"""``python -m worker.sandbox_exec [limits] -- CMD...``: apply limits to itself, then exec CMD.

Untrusted uploads (a TorchScript or export archive can run code when loaded) are only ever
opened by a process started through this wrapper: an address-space cap, a CPU-time cap, no
core dumps, a bounded file size, and when the kernel allows it a fresh network namespace
with no interfaces but loopback. Limits are set here, after the fork and exec of a clean
interpreter, rather than in a ``preexec_fn`` of the multi-threaded worker.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import sys

CLONE_NEWNET = 0x40000000


def _isolate_network() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(CLONE_NEWNET) == 0
    except Exception:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.sandbox_exec")
    parser.add_argument("--memory", type=int, required=True, help="address-space cap in bytes")
    parser.add_argument("--cpu", type=int, required=True, help="CPU seconds")
    parser.add_argument("--file-size", type=int, default=4 * 1024**3)
    parser.add_argument("--no-network", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    resource.setrlimit(resource.RLIMIT_AS, (args.memory, args.memory))
    resource.setrlimit(resource.RLIMIT_CPU, (args.cpu, args.cpu + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (args.file_size, args.file_size))
    if args.no_network and not _isolate_network():
        print("sandbox: no network namespace available; network not isolated", file=sys.stderr)
    os.execvp(command[0], command)
    return 127  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
