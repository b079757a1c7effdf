"""What the benchmarks ran on, and a process's CPU time: shared by every bench script."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import zmq

TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


def machine() -> dict[str, str]:
    """CPUs, their model, OS, Python, pyzmq, libzmq and the load average right now."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": str(os.cpu_count()),
        "cpu_model": model or platform.processor(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "load_average_at_start": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def versions(distributions: Sequence[str]) -> dict[str, str]:
    """The installed version of each distribution (package) name, "-" if it is not installed."""
    found = {}
    for name in distributions:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "-"
    return found


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (which may hold spaces): state is [0]."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    return stat.rsplit(")", 1)[1].split()


def descendants(pids: Sequence[int]) -> list[int]:
    """Every process whose parent, grandparent, ... is one of ``pids`` (not ``pids`` themselves)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parent = int(_stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue  # it exited while we looked
            children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = list(pids)
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def process_cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds of processes and all their descendants (a server's worker
    processes), every thread included, from /proc/PID/stat."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    for pid in descendants(pids):
        with contextlib.suppress(OSError):  # a child that exits now takes its time with it
            fields = _stat_fields(pid)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def listening_sockets(port: int) -> int:
    """How many TCP sockets listen on ``port`` (any address), from /proc/net/tcp and tcp6.

    Servers whose worker processes each listen on the same port (SO_REUSEPORT)
    show one line per worker; some (gRPC) listen on IPv4 through an IPv6 socket.
    """
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):  # a kernel without IPv6
            for line in Path(table).read_text(encoding="ascii").splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == TCP_LISTEN:
                    count += 1
    return count


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB, from /proc/<pid>/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    """How many file descriptors a process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))
