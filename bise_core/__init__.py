"""bise_core: Bias-Invariant Subnetwork Extraction on frozen, already-trained models.

A plain library (no dependency on the service packages) with its own CLI, ``bise prune``.
The flow is: load a model archive -> find prunable units on its FX graph -> learn gates
-> evaluate -> export masked / slim checkpoints -> report.
"""

__version__ = "0.1.0"
