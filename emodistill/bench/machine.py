"""The machine the numbers belong to: CPU model (and what its CPUID family and model say when a
hypervisor shows only a generic name), cores, caches, memory, vector units, library versions,
load, and the fp32 matrix-multiply peak the model-only rows are divided by."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from emodistill.bench.common import seconds_of, significant
from emodistill.core.runtime import usable_cpus
from emodistill.models.speed import bf16_fast

# (vendor, CPUID family, first model, last model) -> microarchitecture: the server parts these
# benchmarks usually land on. Virtual machines often name the CPU only "AMD EPYC" or "Intel(R)
# Xeon(R) Processor"; the family and model still tell the generation.
MICROARCHITECTURES = (
    ("AuthenticAMD", 23, 0x00, 0x2F, "Zen / Zen+ (EPYC Naples)"),
    ("AuthenticAMD", 23, 0x30, 0x3F, "Zen 2 (EPYC Rome)"),
    ("AuthenticAMD", 25, 0x00, 0x0F, "Zen 3 (EPYC Milan)"),
    ("AuthenticAMD", 25, 0x10, 0x1F, "Zen 4 (EPYC Genoa)"),
    ("AuthenticAMD", 25, 0xA0, 0xAF, "Zen 4c (EPYC Bergamo / Siena)"),
    ("AuthenticAMD", 26, 0x00, 0xFF, "Zen 5 (EPYC Turin)"),
    ("GenuineIntel", 6, 0x55, 0x55, "Skylake-SP / Cascade Lake / Cooper Lake"),
    ("GenuineIntel", 6, 0x6A, 0x6C, "Ice Lake-SP"),
    ("GenuineIntel", 6, 0x8F, 0x8F, "Sapphire Rapids"),
    ("GenuineIntel", 6, 0xCF, 0xCF, "Emerald Rapids"),
    ("GenuineIntel", 6, 0xAD, 0xAE, "Granite Rapids"),
)
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_fields() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    path = Path("/proc/cpuinfo")
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.strip():
                break  # the end of the first processor
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    return fields


def microarchitecture(vendor: str, family: int | None, model: int | None) -> str:
    """The generation that CPUID's vendor, family and model name, or "unknown"."""
    for known, fam, first, last, name in MICROARCHITECTURES:
        if vendor == known and family == fam and model is not None and first <= model <= last:
            return name
    return "unknown"


def caches() -> dict[str, str]:
    """Cache sizes of the first CPU by level and kind (sysfs), e.g. {"L1d": "32K", "L3": "32768K"}."""
    found = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        found[f"L{level}{suffix}"] = size
    return found


def memory_gib() -> float | None:
    """Physical memory of the machine in GiB (MemTotal), None where /proc/meminfo is missing."""
    path = Path("/proc/meminfo")
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def machine_info() -> dict:
    """CPU model and generation, usable cores, caches, memory, vector extensions, library
    versions and the load average at the start."""
    fields = cpu_fields()
    flags = set(fields.get("flags", "").split())
    vendor = fields.get("vendor_id", "")
    family = int(fields["cpu family"]) if fields.get("cpu family", "").isdigit() else None
    model = int(fields["model"]) if fields.get("model", "").isdigit() else None
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_vendor": vendor,
        "cpu_family": family,
        "cpu_model": model,
        "cpu_stepping": fields.get("stepping"),
        "microarchitecture": microarchitecture(vendor, family, model),
        "cpu_mhz": fields.get("cpu MHz"),
        "caches": caches(),
        "cores": usable_cpus(),
        "memory_gib": memory_gib(),
        "vector": [f for f in VECTOR_FLAGS if f in flags],
        "bf16_fast": bf16_fast(flags),
        "flags": sorted(flags),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


def describe_cpu(machine: dict) -> str:
    """"AMD EPYC, Zen 4 (EPYC Genoa), family 25 model 17" - the model name and what CPUID adds."""
    if machine.get("microarchitecture", "unknown") == "unknown" and machine.get("cpu_family") is None:
        return machine["cpu"]
    return (f"{machine['cpu']} ({machine.get('microarchitecture', 'unknown')}, CPUID family "
            f"{machine.get('cpu_family')} model {machine.get('cpu_model')})")


def matmul_peak(n: int, threads: int, repeats: int = 10) -> dict:
    """Best fp32 n x n matrix product on `threads` threads: 2 n^3 flops = n^3 multiply-adds."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)  # warm-up: thread pool, caches
        best = min(seconds_of(lambda: torch.matmul(a, b)) for _ in range(repeats))
    finally:
        torch.set_num_threads(previous)
    macs = n**3 / best
    return {"threads": threads, "n": n, "gflops": significant(2 * macs / 1e9),
            "gmacs_per_s": significant(macs / 1e9),
            "convention": "one multiply-add = 2 flops; the ratio columns use multiply-adds"}
