"""What the runner records about the device: platform, CPU, memory, L4T, emulation."""
import os
import platform


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except (IOError, OSError):
        return None


EMULATION_MARKER = "/etc/edgekit-emulated"
EMULATED_NOTE = "emulated, not representative"
ARM_CORES = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE", "0xd4f": "Neoverse-V2"}


def emulation():
    """How this device is emulated, or None on real hardware: the marker file an emulated board
    carries (key=value lines; tools/boards writes it) and qemu-user's QEMU_CPU."""
    text = _read(EMULATION_MARKER)
    qemu_cpu = os.environ.get("QEMU_CPU")
    if text is None and not qemu_cpu:
        return None
    info = {"marker": EMULATION_MARKER if text is not None else None, "qemu_cpu": (qemu_cpu or "")[:64] or None,
            "note": EMULATED_NOTE}
    for line in (text or "").splitlines()[:32]:
        key, sep, value = line.partition("=")
        if sep and key.strip() and key.strip() not in info:
            info[key.strip()[:64]] = value.strip()[:256]
    return info


def device_facts():
    facts = {"hostname": platform.node(), "machine": platform.machine(), "system": platform.system(),
             "kernel": platform.release(), "python": platform.python_version(), "cpu_count": os.cpu_count()}
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Model") and value:
            facts["cpu_model"] = value
        elif key in ("flags", "Features") and value and "cpu_features" not in facts:
            facts["cpu_features"] = value.split()[:512]
        elif key == "CPU part" and value and "cpu_part" not in facts:
            facts["cpu_part"] = value
            facts["cpu_core"] = ARM_CORES.get(value.lower(), "unknown ARM part %s" % value)
    emulated = emulation()
    if emulated:
        facts["emulated"] = emulated
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            facts["mem_total_mb"] = int(line.split()[1]) // 1024
    tegra = _read("/etc/nv_tegra_release")
    if tegra:
        facts["l4t"] = tegra.splitlines()[0].strip()
    return facts
