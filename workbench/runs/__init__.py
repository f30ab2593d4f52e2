"""Run registry: every run the workbench does (spec, status, history, metrics, predictions, checkpoints)."""
from workbench.runs.registry import STATUSES, Registry, RunHandle
from workbench.runs.spec import RunSpec

__all__ = ["Registry", "RunHandle", "RunSpec", "STATUSES"]
