"""detections: a detector's decoded boxes matched against FP32's (the arithmetic is in guard.py,
beside the guards; the options are edgekit.toml's [validation.detections])."""
from . import Metric
from .. import guard


class Detections(Metric):
    name = "detections"
    task = True
    order = 70

    def score(self, outputs, references, feeds, settings):
        return guard.detections_score(outputs, references, settings.get("options"))
