"""`RunSpec` lives with the spec builder in `workbench.protocols.runspec`; re-exported here."""
from workbench.protocols.runspec import SHORT_HASH_LEN, RunSpec, canonical_json, canonicalize

__all__ = ["SHORT_HASH_LEN", "RunSpec", "canonical_json", "canonicalize"]
