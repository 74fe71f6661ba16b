"""Environment fingerprint recorded with every row (through env_id) and in FILE.env.json; its machine_id
(attnbench.machine) names the machine and software stack without the project's commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from attnbench.machine import DERIVED_FIELDS, VOLATILE, short_hash
from attnbench.machine import machine_id as machine_id

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ("torch", "triton", "flash-attn", "flash_attn_3", "xformers", "numpy", "pandas")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """Commit, its committer date (ISO 8601) and the dirty flag of the project checkout (None where it is not a
    git checkout)."""
    try:
        shown = subprocess.run(
            ["git", "-C", str(root), "show", "-s", "--format=%H %cI", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.split()
        commit, date = shown if len(shown) == 2 else (None, None)
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
        return {"git_commit": commit, "git_commit_date": date, "git_dirty": bool(status.strip()) if commit else None}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_commit_date": None, "git_dirty": None}


def fingerprint(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """What the numbers depend on: hardware, software versions, settings, project commit."""
    fp: dict[str, Any] = {
        "device": device,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": _mem_total(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
        "versions": {name: _version(name) for name in BACKENDS},
        "cuda_version": torch.version.cuda,
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        idx = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        fp.update(
            gpu_name=props.name,
            gpu_memory_bytes=int(props.total_memory),
            gpu_sm_count=int(props.multi_processor_count),
            gpu_capability=f"{props.major}.{props.minor}",
            cudnn_version=torch.backends.cudnn.version(),
            driver=_nvidia_smi("driver_version"),
        )
    fp.update(git_state())
    try:
        fp["load_average_1m"] = os.getloadavg()[0]  # volatile: recorded, not part of env_id
    except OSError:
        pass
    return fp


def _nvidia_smi(field: str) -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


TELEMETRY_FIELDS = (  # nvidia-smi query field -> (metric, unit)
    ("clocks.sm", "gpu_clock_mhz", "MHz"),
    ("clocks.mem", "gpu_mem_clock_mhz", "MHz"),
    ("power.draw", "gpu_power_w", "W"),
    ("temperature.gpu", "gpu_temp_c", "C"),
)


def parse_telemetry(line: str) -> dict[str, tuple[float, str]]:
    """One `nvidia-smi --format=csv,noheader,nounits` line -> {metric: (value, unit)}; fields that
    read "[N/A]" or "[Not Supported]" are left out."""
    out: dict[str, tuple[float, str]] = {}
    for (_, metric, unit), text in zip(TELEMETRY_FIELDS, line.split(",")):
        try:
            out[metric] = (float(text.strip()), unit)
        except ValueError:
            continue
    return out


def _nvidia_smi_line(query: str, index: int | None, *, units: bool = True) -> str | None:
    """The first line nvidia-smi prints for `--query-gpu=query` on GPU `index` (default: the current one), or None
    when nvidia-smi cannot be run or answers nothing."""
    if index is None:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
    fmt = "csv,noheader" if units else "csv,noheader,nounits"
    try:
        res = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", f"--format={fmt}", "-i", str(index)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = res.stdout.strip().splitlines()
    return lines[0] if res.returncode == 0 and lines else None


def gpu_telemetry(index: int | None = None) -> dict[str, tuple[float, str]]:
    """SM/memory clocks, power draw and temperature of the current GPU, when nvidia-smi can read them."""
    line = _nvidia_smi_line(",".join(f for f, _, _ in TELEMETRY_FIELDS), index, units=False)
    return parse_telemetry(line) if line is not None else {}


THROTTLE_FIELDS = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")  # newer, older drivers


def parse_reasons(text: str) -> int | None:
    """nvidia-smi's active clock-event reasons ("0x0000000000000004") as an integer bit mask; None if unreadable."""
    try:
        return int(text.strip(), 16)
    except ValueError:
        return None


def gpu_throttle_reasons(index: int | None = None) -> int | None:
    """The current GPU's active clock-event (throttle) reasons as a bit mask, when nvidia-smi can read them."""
    for field in THROTTLE_FIELDS:
        line = _nvidia_smi_line(field, index)
        reasons = parse_reasons(line) if line is not None else None
        if reasons is not None:
            return reasons
    return None


def env_id(fp: dict[str, Any]) -> str:
    """Short stable hash of a fingerprint (volatile readings such as the load average, and the machine_id
    derived from the rest, excluded); the project's commit is part of it (machine_id is the id without it)."""
    return short_hash({k: v for k, v in fp.items() if k not in (*VOLATILE, *DERIVED_FIELDS)})
