"""What the agent tells the node about its machine (the hello's `hardware`)."""

from __future__ import annotations

import os
import platform
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def hardware_info(threads: int) -> dict[str, Any]:
    return {"cpu": _cpu_model(), "threads": threads, "cpu_count": os.cpu_count(),
            "ram_gb": _ram_gb(), "arch": platform.machine(), "os": platform.system()}
