"""psnr: peak signal-to-noise ratio in dB over all samples, the peak being the reference's largest
magnitude (inf when the outputs are identical)."""
import numpy as np

from . import Metric


def flat(arrays):
    """Every sample's array, raveled and joined, as float64."""
    return np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in arrays])


class Psnr(Metric):
    name = "psnr"
    order = 40
    slack = -0.1

    def key(self, k=5):
        return "psnr_db"

    def score(self, outputs, references, feeds, settings):
        o, r = flat(outputs), flat(references)
        mse = float(np.mean((o - r) ** 2))
        peak = float(np.max(np.abs(r))) or 1.0
        value = float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)
        return {"value": float(value), "mse": mse}
