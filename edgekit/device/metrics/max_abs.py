"""max_abs: the largest absolute difference from the FP32 reference, over every element."""
import numpy as np

from . import Metric
from .psnr import flat


class MaxAbs(Metric):
    name = "max_abs"
    higher_is_better = False
    order = 50
    slack = 0.01
    relative_slack = True

    def score(self, outputs, references, feeds, settings):
        return {"value": float(np.max(np.abs(flat(outputs) - flat(references))))}
