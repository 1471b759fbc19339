"""cosine: the mean cosine similarity of each sample's output with the FP32 reference's (``min``
too); ``pooling = "mean"`` first averages token embeddings over the attention mask."""
import numpy as np

from . import Metric


def pool(arr, feed, pooling, mask_input):
    arr = np.asarray(arr, dtype=np.float64)
    if pooling == "mean" and arr.ndim == 3 and feed is not None and mask_input in feed:
        mask = np.asarray(feed[mask_input], dtype=np.float64)[..., None]
        return (arr * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    return arr


class Cosine(Metric):
    name = "cosine"
    order = 30
    slack = -1e-4

    def score(self, outputs, references, feeds, settings):
        pooling, mask_input = settings.get("pooling", "none"), settings.get("mask_input", "attention_mask")
        sims = []
        for out, ref, feed in zip(outputs, references, feeds):
            o = pool(out, feed, pooling, mask_input)
            r = pool(ref, feed, pooling, mask_input)
            o = o.reshape(o.shape[0], -1) if o.ndim > 1 else o.reshape(1, -1)
            r = r.reshape(r.shape[0], -1) if r.ndim > 1 else r.reshape(1, -1)
            num = (o * r).sum(axis=1)
            den = np.linalg.norm(o, axis=1) * np.linalg.norm(r, axis=1)
            sims.extend((num / np.maximum(den, 1e-12)).tolist())
        return {"value": float(np.mean(sims)), "min": float(np.min(sims)), "n": len(sims)}
