"""Figures of a process from /proc (Linux): memory, threads, CPU time."""
from __future__ import annotations

import os
from typing import Optional


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (KiB) and Threads of ``pid`` (empty once it is gone)."""
    wanted = {"VmRSS", "VmHWM", "Threads"}
    figures: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in wanted:
                    figures[key] = int(value.split()[0])
    except OSError:
        pass
    return figures


def process_cpu_s(pid: int) -> Optional[float]:
    """User + system CPU seconds of ``pid`` so far (itself, not its children; None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
