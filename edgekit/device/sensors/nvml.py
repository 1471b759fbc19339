"""NVIDIA GPUs' total-energy counters through NVML (pynvml, imported only when probed)."""
import sys
from typing import Any, Dict, List, Tuple

from . import Reading, Sampler, SamplerUnavailable

class NvmlSampler(Sampler):
    """NVIDIA GPUs via NVML: ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded),
    summed over the GPUs that support it (Volta and newer). Jetson's integrated GPU answers
    NotSupported."""

    name = "nvml"
    auto_rank = 50
    scope = "board input"
    method = "energy counter"
    reading = "energy"
    reads = "pynvml: nvmlDeviceGetTotalEnergyConsumption (mJ) per GPU"

    def __init__(self, *args, **kwargs):
        nvml = kwargs.pop("nvml", None)
        Sampler.__init__(self, *args, **kwargs)
        self._nvml = nvml
        self._handles = []  # type: List[Tuple[int, Any]]
        self._started = False

    def probe(self):
        nv = self._nvml
        if nv is None:
            try:
                import pynvml as nv  # type: ignore
            except ImportError:
                raise SamplerUnavailable("pynvml is not importable by %s (pip install nvidia-ml-py)"
                                         % sys.executable)
            self._nvml = nv
        try:
            nv.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded...
            raise SamplerUnavailable("NVML did not start: %s" % exc)
        self._started = True
        refused = []
        for i in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(i)
            try:
                nv.nvmlDeviceGetTotalEnergyConsumption(handle)
            except Exception as exc:
                refused.append("GPU %d: %s" % (i, exc))
                continue
            self._handles.append((i, handle))
        if not self._handles:
            self.close()
            why = "; ".join(refused) or "no GPU found"
            raise SamplerUnavailable("NVML has no total-energy counter here (%s). Jetson's integrated "
                                     "GPU and pre-Volta GPUs answer NotSupported; on Jetson use "
                                     "ina3221-hwmon or tegrastats" % why)
        if refused:
            self.notes.append("nvml: skipped %s" % "; ".join(refused))
        self.scope_note = ("NVML total energy of %d GPU board(s): the accelerator card(s) only, not "
                           "the host CPU, memory or power supply" % len(self._handles))

    def read(self):
        nv = self._nvml
        return {str(i): nv.nvmlDeviceGetTotalEnergyConsumption(h) for i, h in self._handles}

    @staticmethod
    def parse(raw):
        # type: (Dict[str, Any]) -> Reading
        """``raw``: {GPU index: total energy in mJ} -> cumulative joules."""
        per_gpu = {"gpu%s" % i: int(mj) / 1000.0 for i, mj in raw.items()}
        if not per_gpu:
            raise ValueError("no GPU energy counters")
        return {"energy_j": sum(per_gpu.values()), "rails": per_gpu}

    def close(self):
        if self._started:
            self._started = False
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
