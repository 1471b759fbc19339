"""What the emulated boards are made of: root filesystems, wheels, CPUs and boards.

Everything a root filesystem's content depends on lives in ROOTFS and is hashed into its cache key
(``rootfs_key``), so changing a package or a pin rebuilds that root filesystem and nothing else.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Tuple

RECIPE_VERSION = 1
"""Bump when the build steps themselves change in a way that changes a root filesystem."""

DEBOOTSTRAP_INCLUDE = "python3,python3-pip,python3-venv,openssh-server,ca-certificates"


@dataclass(frozen=True)
class Rootfs:
    name: str
    suite: str
    python: str
    """cpXY tag of the suite's python3, for pip download."""
    platforms: Tuple[str, ...]
    """manylinux tags the suite's glibc accepts, newest first (manylinux2014 alone makes pip pair
    onnxruntime 1.16.3 with numpy 2.x, which cannot import)."""
    wheels: Tuple[str, ...]
    pip_flags: Tuple[str, ...] = ()
    imports: Tuple[str, ...] = ("numpy", "onnxruntime")


ROOTFS: Dict[str, Rootfs] = {
    # The host's onnxruntime and numpy, so ARM and x86 int8 kernels are compared at one version.
    "bookworm": Rootfs(
        name="bookworm", suite="bookworm", python="311",
        platforms=("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64"),
        wheels=("numpy==2.4.6", "onnxruntime==1.32.0", "ai-edge-litert==2.3.0"),
        pip_flags=("--break-system-packages",),  # PEP 668: bookworm's python3 is externally managed
        imports=("numpy", "onnxruntime", "ai_edge_litert"),
    ),
    # An older userland, like JetPack 5's: Python 3.9 and the newest cp39 onnxruntime. tflite-runtime
    # 2.13 is built against numpy 1.x, so numpy stays below 2 here (bullseye's pip has no PEP 668).
    "bullseye": Rootfs(
        name="bullseye", suite="bullseye", python="39",
        platforms=("manylinux_2_31_aarch64", "manylinux_2_28_aarch64", "manylinux_2_27_aarch64",
                   "manylinux2014_aarch64"),
        wheels=("numpy==1.26.4", "onnxruntime==1.19.2", "tflite-runtime==2.13.0"),
        imports=("numpy", "onnxruntime", "tflite_runtime"),
    ),
}


@dataclass(frozen=True)
class Cpu:
    qemu: str
    """QEMU_CPU: must match the cpuinfo, or int8 kernels die on illegal instructions."""
    part: str
    variant: str
    revision: int
    features: Tuple[str, ...]
    model: str


CPUS: Dict[str, Cpu] = {
    # Raspberry Pi 5 (BCM2712). qemu's default "max" CPU would add SVE, i8mm and bf16, and
    # onnxruntime would pick kernels a Pi 5 does not have.
    "cortex-a76": Cpu("cortex-a76", "0xd0b", "0x4", 1,
                      ("fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp",
                       "asimdhp", "cpuid", "asimdrdm", "lrcpc", "dcpop", "asimddp"),
                      "Raspberry Pi 5 Model B (emulated: qemu-user cortex-a76)"),
    # Raspberry Pi 4 (BCM2711): ARMv8.0, no dot product, no fp16 arithmetic, no crypto extension.
    "cortex-a72": Cpu("cortex-a72", "0xd08", "0x0", 3,
                      ("fp", "asimd", "evtstrm", "crc32", "cpuid"),
                      "Raspberry Pi 4 Model B (emulated: qemu-user cortex-a72)"),
}


@dataclass(frozen=True)
class Board:
    name: str
    rootfs: str
    cpu: str
    target: str
    port: int
    """Preferred loopback port; another free one is taken when it is busy."""
    description: str
    groups: Tuple[str, ...] = field(default=("emu",))


BOARDS: Dict[str, Board] = {
    "emu-pi5": Board("emu-pi5", "bookworm", "cortex-a76", "raspberry-pi-5", 52251,
                     "Raspberry Pi 5: Debian bookworm arm64, Cortex-A76 (asimddp)"),
    # Shares the bookworm root filesystem; its own mount namespace gives it its own cpuinfo,
    # QEMU_CPU, home and /tmp.
    "emu-pi4": Board("emu-pi4", "bookworm", "cortex-a72", "raspberry-pi-4", 52252,
                     "Raspberry Pi 4: Debian bookworm arm64, Cortex-A72 (no dot product)"),
    "emu-bullseye": Board("emu-bullseye", "bullseye", "cortex-a72", "raspberry-pi-4", 52253,
                          "Raspberry Pi 4 on an older userland: Debian bullseye, Python 3.9, onnxruntime 1.19"),
}


def cpuinfo(cpu: Cpu, cores: int = 4) -> str:
    """A /proc/cpuinfo as the board's kernel writes it (arm64 layout, Raspberry Pi trailer)."""
    blocks = []
    for i in range(cores):
        blocks.append("\n".join([
            f"processor\t: {i}",
            "BogoMIPS\t: 108.00",
            f"Features\t: {' '.join(cpu.features)}",
            "CPU implementer\t: 0x41",
            "CPU architecture: 8",
            f"CPU variant\t: {cpu.variant}",
            f"CPU part\t: {cpu.part}",
            f"CPU revision\t: {cpu.revision}",
        ]))
    trailer = "\n".join(["Hardware\t: BCM2835", f"Model\t\t: {cpu.model}"])
    return "\n\n".join(blocks) + "\n\n" + trailer + "\n"


def rootfs_key(rootfs: Rootfs) -> str:
    """The cache key: every input that shapes the root filesystem."""
    blob = json.dumps({"v": RECIPE_VERSION, "include": DEBOOTSTRAP_INCLUDE, "rootfs": asdict(rootfs)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def pip_download_argv(rootfs: Rootfs, dest: str) -> List[str]:
    argv = ["download", "--quiet", "--only-binary=:all:", "--dest", dest, "--python-version", rootfs.python,
            "--implementation", "cp", "--abi", f"cp{rootfs.python}", "--abi", "abi3", "--abi", "none"]
    for p in rootfs.platforms:
        argv += ["--platform", p]
    return argv + list(rootfs.wheels)
