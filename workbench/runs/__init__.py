"""Run registry: every run the workbench does (spec, status, history, metrics, predictions, embeddings,
checkpoints). `index` holds the SQLite index, `handle` one run, `files` a run folder's files."""
from workbench.runs.files import embedding_keys, load_embeddings
from workbench.runs.handle import STATUSES, RunHandle
from workbench.runs.index import RUN_COLUMNS, Registry
from workbench.runs.spec import RunSpec

__all__ = ["RUN_COLUMNS", "Registry", "RunHandle", "RunSpec", "STATUSES", "embedding_keys", "load_embeddings"]
