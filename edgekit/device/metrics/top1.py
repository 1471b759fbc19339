"""top1: the share of samples (rows) whose argmax equals the FP32 reference's."""
import numpy as np

from . import Metric


def rows(arr):
    """A [..., classes] array as [rows, classes]: every position along the leading axes is a sample."""
    return np.asarray(arr).reshape(-1, np.shape(arr)[-1])


class Top1(Metric):
    name = "top1"
    order = 10
    share_of_rows = True

    def score(self, outputs, references, feeds, settings):
        hits = []
        for out, ref in zip(outputs, references):
            hits.extend((rows(out).argmax(axis=-1) == rows(ref).argmax(axis=-1)).tolist())
        return {"value": float(np.mean(hits)), "n": len(hits)}
