"""max_rel: the largest relative difference |out - ref| / (|ref| + 1e-6), over every element."""
import numpy as np

from . import Metric
from .psnr import flat


class MaxRel(Metric):
    name = "max_rel"
    higher_is_better = False
    order = 60
    slack = 0.01
    relative_slack = True

    def score(self, outputs, references, feeds, settings):
        o, r = flat(outputs), flat(references)
        return {"value": float(np.max(np.abs(o - r) / (np.abs(r) + 1e-6)))}
