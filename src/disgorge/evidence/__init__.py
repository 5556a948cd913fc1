"""Evidence about a model: effect probes and the certificate that compares an unlearned model with its parent and
a retrained reference. It sits above the workspace; the metric functions it uses live in :mod:`disgorge.evaluate`."""

from .certificate import Measurement, Thresholds, certify, figure_rows, measure, measure_reference, write_certificate
from .probes import Probe, share_predicted

__all__ = ["Measurement", "Probe", "Thresholds", "certify", "figure_rows", "measure", "measure_reference",
           "share_predicted", "write_certificate"]
