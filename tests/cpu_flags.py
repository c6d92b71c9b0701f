"""What the CPU offers, for tests whose exact floats depend on the kernels oneDNN and MKL pick for it."""

from pathlib import Path


def has_amx() -> bool:
    """Intel AMX (bf16 tiles): oneDNN and MKL take other kernels on such CPUs, summing in another order."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return "amx_bf16" in flags.split()
