"""sequences: greedy-decoded argmax sequences must equal FP32's (CTC-style OCR, ASR; the arithmetic
is in guard.py, the options are edgekit.toml's [validation.sequences])."""
from . import Metric
from .. import guard


class Sequences(Metric):
    name = "sequences"
    task = True
    order = 80

    def score(self, outputs, references, feeds, settings):
        return guard.sequences_score(outputs, references, settings.get("options"))
