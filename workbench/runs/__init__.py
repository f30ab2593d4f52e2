"""Run registry: every run the workbench does (spec, status, history, metrics, predictions, embeddings,
checkpoints). `index` holds the SQLite index, `handle` one run, `files` a run folder's files. Errors
that say what to do derive from `RegistryError`; a full disk raises `workbench.fileio.DiskFullError`."""
from workbench.runs.files import CheckpointError, RegistryError, RunBusyError, embedding_keys, load_embeddings
from workbench.runs.handle import STATUSES, RunHandle, Terminated
from workbench.runs.index import (RUN_COLUMNS, IndexDamagedError, Registry, RegistryNotFoundError,
                                  RegistryReadOnlyError)
from workbench.runs.spec import RunSpec

__all__ = ["CheckpointError", "IndexDamagedError", "RUN_COLUMNS", "Registry", "RegistryError", "RegistryNotFoundError",
           "RegistryReadOnlyError", "RunBusyError", "RunHandle", "RunSpec", "STATUSES", "Terminated", "embedding_keys",
           "load_embeddings"]
