"""System metrics for the technician's dashboard (the `dashboard` subsystem), via psutil.

The server writes one JSON sample per line; the next sample is taken only after the previous
one was written, so samples never overlap however slow the system or the client. The client
may write {"interval": seconds} to change the pace (at least MIN_INTERVAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import time
from datetime import UTC, datetime

import asyncssh
import psutil

DEFAULT_INTERVAL = 2.0
MIN_INTERVAL = 1.0
MAX_INTERVAL = 3600.0
TOP_PROCESSES = 15
MAX_DISKS = 32
MAX_NICS = 32
JOURNAL_LINES = 20
MAX_FIELD = 500
TOOL_TIMEOUT = 3.0
PSEUDO_FS = {"tmpfs", "devtmpfs", "squashfs", "overlay", "proc", "sysfs", "cgroup", "cgroup2",
             "devpts", "mqueue", "debugfs", "tracefs", "securityfs", "pstore", "autofs",
             "fusectl", "configfs", "bpf", "nsfs", "ramfs", "hugetlbfs", "efivarfs", "binfmt_misc"}


def _tool_lines(argv: list[str]) -> list[str] | None:
    """Output lines of a system tool, or None when it is missing, fails or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT,
                                stdin=subprocess.DEVNULL, errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return [line[:MAX_FIELD] for line in result.stdout.splitlines() if line.strip()]


def failed_units() -> list[str]:
    if platform.system() != "Linux":
        return []
    lines = _tool_lines(["systemctl", "--failed", "--plain", "--no-legend", "--no-pager"]) or []
    return [line.split()[0] for line in lines[:100] if line.split()]


def journal_tail() -> list[str]:
    if platform.system() != "Linux":
        return []
    return (_tool_lines(["journalctl", "-n", str(JOURNAL_LINES), "--no-pager", "-q",
                         "-o", "short-iso"]) or [])[-JOURNAL_LINES:]


def _disks() -> list[dict]:
    disks = []
    with contextlib.suppress(OSError):
        for part in psutil.disk_partitions(all=False):
            if part.fstype in PSEUDO_FS or len(disks) >= MAX_DISKS:
                continue
            try:
                usage = psutil.disk_usage(part.mountpoint)
            except OSError:
                continue
            disks.append({"mount": part.mountpoint[:MAX_FIELD], "total": usage.total,
                          "used": usage.used, "percent": usage.percent})
    return disks


def _processes() -> list[dict]:
    rows = []
    # process_iter keeps Process objects between calls, so cpu_percent measures since the
    # previous sample (0.0 on the first one).
    for proc in psutil.process_iter(["pid", "name", "username", "cpu_percent",
                                     "memory_percent"]):
        info = proc.info
        rows.append({"pid": info["pid"], "name": (info["name"] or "")[:MAX_FIELD],
                     "user": (info["username"] or "")[:MAX_FIELD],
                     "cpu": round(info["cpu_percent"] or 0.0, 1),
                     "memory": round(info["memory_percent"] or 0.0, 2)})
    rows.sort(key=lambda r: (r["cpu"], r["memory"]), reverse=True)
    return rows[:TOP_PROCESSES]


def collect_sample() -> dict:
    """One dashboard sample (blocking: run it in a thread)."""
    memory = psutil.virtual_memory()
    swap = psutil.swap_memory()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = [0.0, 0.0, 0.0]
    nics = psutil.net_io_counters(pernic=True)
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "uptime": round(time.time() - psutil.boot_time()),
        "cpu": {"percent": psutil.cpu_percent(interval=None),
                "per_cpu": psutil.cpu_percent(interval=None, percpu=True),
                "count": psutil.cpu_count() or 1},
        "memory": {"total": memory.total, "used": memory.used, "percent": memory.percent},
        "swap": {"total": swap.total, "used": swap.used, "percent": swap.percent},
        "load": load,
        "disks": _disks(),
        "net": [{"name": name[:MAX_FIELD], "bytes_sent": c.bytes_sent,
                 "bytes_recv": c.bytes_recv} for name, c in list(nics.items())[:MAX_NICS]],
        "processes": _processes(),
        "failed_units": failed_units(),
        "journal": journal_tail(),
    }


def _interval_of(line: bytes) -> float | None:
    try:
        body = json.loads(line)
        value = float(body["interval"])
    except (ValueError, TypeError, KeyError):
        return None
    if value != value:  # NaN
        return None
    return min(max(value, MIN_INTERVAL), MAX_INTERVAL)


async def serve_dashboard(process: asyncssh.SSHServerProcess,
                          interval: float = DEFAULT_INTERVAL) -> None:
    """Stream samples until the channel closes; each one after the previous was written."""
    changed = asyncio.Event()
    pace = {"interval": interval}

    async def listen() -> None:
        buffer = b""
        while data := await process.stdin.read(4096):
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            buffer = buffer[-4096:]
            for line in lines:
                value = _interval_of(line)
                if value is not None:
                    pace["interval"] = value
                    changed.set()

    listener = asyncio.create_task(listen())
    # End of input is not the end of the stream (`ssh -s dashboard </dev/null`): the channel's
    # close is.
    closed = asyncio.create_task(process.channel.wait_closed())
    await asyncio.to_thread(psutil.cpu_percent, interval=None)  # prime the CPU counters
    try:
        while not closed.done():
            sample = await asyncio.to_thread(collect_sample)
            process.stdout.write((json.dumps(sample) + "\n").encode())
            await process.stdout.drain()
            changed.clear()
            sleeper = asyncio.create_task(changed.wait())
            await asyncio.wait({sleeper, closed}, timeout=pace["interval"],
                               return_when=asyncio.FIRST_COMPLETED)
            sleeper.cancel()
    except (asyncssh.Error, ConnectionError, BrokenPipeError):
        pass
    finally:
        for task in (listener, closed):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    process.exit(0)
