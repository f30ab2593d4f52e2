"""Sweeps: a YAML grid → RunSpecs through the one spec builder → an executor (local pool, submitit).

    sweep = load_sweep("sweeps/coop_toy.yaml")        # SweepError names FILE:LINE
    run_sweep(sweep, "runs/")                          # done runs skipped, interrupted ones resumed
    sweep_status(sweep, Registry("runs/"))["counts"]   # done / running / failed / interrupted / pending
    summary, per_seed = sweep_results(sweep, Registry("runs/"))
    write_sweep("grid.yaml", ["coop"], "base_to_novel", ["toy_objects"], 16, [1, 2, 3])
    write_sweep_specs("grid.yaml", notebook_specs(...))  # a notebook's grid, exactly its runs
"""
from workbench.sweeps.run import pending_specs, registry_root, run_sweep
from workbench.sweeps.spec import (Sweep, SweepError, load_sweep, sweep_dict, sweep_from_specs, write_sweep,
                                   write_sweep_specs)
from workbench.sweeps.state import merge_index, run_state, sweep_results, sweep_status

__all__ = ["Sweep", "SweepError", "load_sweep", "merge_index", "pending_specs", "registry_root", "run_state",
           "run_sweep", "sweep_dict", "sweep_from_specs", "sweep_results", "sweep_status", "write_sweep",
           "write_sweep_specs"]
