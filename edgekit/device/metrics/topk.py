"""topk: the share of rows whose FP32 argmax is among the output's k highest scores."""
import re

import numpy as np

from . import Metric
from .top1 import rows


class TopK(Metric):
    name = "topk"
    order = 20
    share_of_rows = True

    def key(self, k=5):
        return "top%d" % int(k)

    def columns(self, found):
        # the key carries k (top3, top10...): every k the runs used gets its column
        return sorted((key for key in found if re.match(r"^top\d+$", key) and key != "top1"),
                      key=lambda key: int(key[3:]))

    def score(self, outputs, references, feeds, settings):
        hits = []
        for out, ref in zip(outputs, references):
            o, want = rows(out), rows(ref).argmax(axis=-1)
            kk = min(int(settings.get("k", 5)), o.shape[-1])
            # stable on -scores: ties rank in index order, as argmax picks the first maximum
            top = np.argsort(-o.astype(np.float64), axis=-1, kind="stable")[:, :kk]
            hits.extend([bool(w in t) for w, t in zip(want, top)])
        return {"value": float(np.mean(hits)), "n": len(hits)}
