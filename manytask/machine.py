"""The machine a measurement ran on: CPU model and the flags that decide bf16 and int8 speed, recorded with
every benchmark (timings on different CPUs are not comparable)."""

from __future__ import annotations

import os
import platform


def cpu_info() -> dict:
    info = {"machine": platform.machine(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return info
    info["model"] = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), None)
    flags = next((l for l in lines if l.startswith("flags")), "").split()
    info["flags"] = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2")) or "vnni" in f)
    return info
