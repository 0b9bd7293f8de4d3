"""``lightning-kd report``: what the student buys you, measured on this machine.

* :mod:`~lightning_kd.report.loading`: a checkpoint (or a weights file and its network config)
  -> the network ready for inference; a run config -> its datamodule.
* :mod:`~lightning_kd.report.measure`: parameters, MACs, size of the weights, latency and
  throughput timings.
* :mod:`~lightning_kd.report.calibration`: NLL, ECE and reliability-diagram bins.
* :mod:`~lightning_kd.report.evaluate`: every network over the test split, once.
* :mod:`~lightning_kd.report.document` and :mod:`~lightning_kd.report.figures`: the Markdown
  and the figures.
* :mod:`~lightning_kd.report.command`: the command (``main(argv)``).
"""

from lightning_kd.report.calibration import (
    ReliabilityBins,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)
from lightning_kd.report.loading import LoadedNetwork, load_network
from lightning_kd.report.measure import (
    Timing,
    count_macs,
    count_parameters,
    state_dict_bytes,
    time_calls,
    time_network,
)

__all__ = [
    "LoadedNetwork",
    "ReliabilityBins",
    "Timing",
    "count_macs",
    "count_parameters",
    "expected_calibration_error",
    "load_network",
    "negative_log_likelihood",
    "reliability_bins",
    "state_dict_bytes",
    "time_calls",
    "time_network",
]
