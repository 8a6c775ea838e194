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


def peak_flops(info: dict | None = None) -> dict:
    """The CPU's peak FLOP rate, estimated from what /proc/cpuinfo says: cores x clock x FLOPs per cycle per
    core. FLOPs per cycle: two FMA pipes x fp32 lanes x 2 (multiply and add); the lanes are 16 on Intel parts
    with AVX-512 (two 512-bit FMA units), 8 on AMD Zen 2-4 and on AVX2-only parts (two 256-bit pipes; Zen 4
    runs AVX-512 on them in two halves), 16 on AMD Zen 5 (family 26). bf16 dot products (avx512_bf16) do twice
    the fp32 work per instruction. The clock is the highest ``cpu MHz`` listed (a virtual machine reports its
    nominal clock; turbo is not counted). An estimate to compare achieved rates against, not a measurement."""
    info = info or cpu_info()
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    mhz = max((float(l.split(":", 1)[1]) for l in lines if l.startswith("cpu MHz")), default=0.0)
    vendor = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("vendor_id")), "")
    family = next((int(l.split(":", 1)[1]) for l in lines if l.startswith("cpu family")), 0)
    flags = set(info.get("flags", []))
    if "avx512f" in flags and (vendor == "GenuineIntel" or (vendor == "AuthenticAMD" and family >= 26)):
        lanes, why = 16, "two 512-bit FMA pipes"
    elif "avx2" in flags:
        lanes, why = 8, "two 256-bit FMA pipes" + (" (AVX-512 in two halves)" if "avx512f" in flags else "")
    else:
        lanes, why = 4, "SSE: two 128-bit pipes"
    per_cycle = 2 * lanes * 2
    cores = info.get("cores") or os.cpu_count() or 1
    fp32 = cores * mhz * 1e6 * per_cycle
    out = {"fp32": fp32, "cores": cores, "mhz": mhz, "flops_per_cycle_per_core": per_cycle,
           "how": f"{cores} cores x {mhz:.0f} MHz x {per_cycle} fp32 FLOPs/cycle ({why}, FMA = 2 FLOPs)"}
    if "avx512_bf16" in flags:
        out["bf16"] = 2 * fp32
    return out
