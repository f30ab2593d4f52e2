"""Compatibility re-export: the registry now lives in `index` (Registry), `handle` (RunHandle) and
`files` (a run folder's files). Import from `workbench.runs` instead."""
from workbench.runs.files import load_embeddings
from workbench.runs.handle import STATUSES, RunHandle
from workbench.runs.index import (BUSY_TIMEOUT_S, DB_NAME, FILTER_COLUMNS, RETRY_DEADLINE_S, RUN_COLUMNS,
                                  SCHEMA_VERSION, Registry)

__all__ = ["BUSY_TIMEOUT_S", "DB_NAME", "FILTER_COLUMNS", "RETRY_DEADLINE_S", "RUN_COLUMNS", "SCHEMA_VERSION",
           "STATUSES", "Registry", "RunHandle", "load_embeddings"]
