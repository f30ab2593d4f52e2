"""Staged training (LP-FT and the like): stage k trains its own parameter set with its own TrainConfig,
each stage through the one training loop (`engine.train.fit`), resumable in the right stage and epoch.

Hooks a method implements (duck-typed; `Method` may carry defaults):
  method.stage_parameters(key) -> iterable of nn.Parameter   the parameters stage `key` trains
      (e.g. LP-FT: "head" -> the linear head, "all" -> head + image tower). A Stage may instead give
      a callable `trains(method) -> parameters`.
  method.on_stage_start(key) (optional)  called after requires_grad is set, before the stage's fit

Before each stage, exactly its parameters have requires_grad=True (every other parameter of the
method False), so fit's optimizer (from `param_groups`) sees only them. After the last stage, every
parameter some stage trained is left trainable, so `trainable_state_dict()` holds them all.

Run handling: fit sees a `StageRun` adapter: its checkpoints are stored as {"phase": "staged", "stage":
k, "fit": <fit's state>, "previous": <trained states of the stages before>, ...} at epoch numbers offset
by the epochs of the earlier stages, and its history rows carry "stage" (name), "stage_index" and
"stage_epoch" (the epoch within the stage) under that global epoch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from ..data.types import DatasetSplits
from .features import FeatureCache
from .train import FitResult, TrainConfig, fit, training_checkpoint

PHASE = "staged"
STAGE_SEED_STRIDE = 100_003  # stage k trains with seed + k * stride (stage 0 is plain fit's seed)


@dataclass
class Stage:
    trains: str | Callable[[Any], Iterable[torch.nn.Parameter]]  # key for method.stage_parameters, or callable
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = ""  # default: the key, or "stage<k+1>"


@dataclass
class StagedResult:
    stages: list[FitResult] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # every stage's epochs, global "epoch", with "stage"
    resumed_from: tuple[int, int] | None = None  # (stage index, epoch within it) of the checkpoint resumed

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.stages)


def stage_names(stages: list[Stage]) -> list[str]:
    names = [s.name or (s.trains if isinstance(s.trains, str) else f"stage{k + 1}") for k, s in enumerate(stages)]
    if len(set(names)) != len(names):
        names = [f"{n}#{k + 1}" for k, n in enumerate(names)]
    return names


def stage_parameter_list(method, stage: Stage) -> list[torch.nn.Parameter]:
    if callable(stage.trains):
        params = list(stage.trains(method))
    elif hasattr(method, "stage_parameters"):
        params = list(method.stage_parameters(stage.trains))
    else:
        raise TypeError(f"method {getattr(method, 'name', method)!r} has no stage_parameters(key); "
                        "give the Stage a callable `trains`")
    if not params:
        raise ValueError(f"stage {stage.trains!r} trains no parameters")
    return params


def select_parameters(method, params: Iterable[torch.nn.Parameter]) -> None:
    """requires_grad=True on exactly `params` among the method's parameters."""
    ids = {id(p) for p in params}
    foreign = ids - {id(p) for p in method.parameters()}
    if foreign:
        raise ValueError(f"{len(foreign)} stage parameter(s) are not parameters of the method")
    for p in method.parameters():
        p.requires_grad_(id(p) in ids)


class StageRun:
    """What `fit` sees as its run during stage k: checkpoints and history of this stage only."""

    def __init__(self, run, index: int, name: str, offset: int, total_epochs: int, stage_epochs: int,
                 previous: list[dict], previous_results: list[dict], resume: tuple[int, dict] | None):
        self.run, self.index, self.name, self.offset = run, index, name, offset
        self.total_epochs, self.stage_epochs = total_epochs, stage_epochs
        self.previous, self.previous_results = previous, previous_results
        self._resume = resume  # (global epoch, wrapped state) of this stage, read once

    def load_checkpoint(self, map_location: Any = "cpu", epoch: int | None = None):
        if epoch is not None:
            raise NotImplementedError("a stage loads only its latest checkpoint")
        loaded, self._resume = self._resume, None
        if loaded is None or loaded[1].get("stage") != self.index:
            return None
        return loaded[0] - self.offset, loaded[1]["fit"]

    def save_checkpoint(self, state: dict, epoch: int, **kw):
        wrapped = {"phase": PHASE, "stage": self.index, "stage_name": self.name, "stage_epoch": int(epoch),
                   "fit": state, "previous": self.previous, "previous_results": self.previous_results}
        return self.run.save_checkpoint(wrapped, self.offset + int(epoch), **kw)

    def log_epoch(self, epoch: int, values: dict) -> None:
        self.run.log_epoch(self.offset + int(epoch), {**values, "stage": self.name, "stage_index": self.index,
                                                      "stage_epoch": int(epoch)})

    def set_progress(self, fraction: float, message: str = "") -> None:
        done = self.offset + float(fraction) * self.stage_epochs
        self.run.set_progress(done / max(self.total_epochs, 1), f"stage {self.name}: {message}")

    def log(self, msg: str) -> None:
        self.run.log(f"stage {self.name}: {msg}")

    def __getattr__(self, item):  # anything else: the real run
        return getattr(self.run, item)


def fit_staged(method, ds: DatasetSplits, stages: list[Stage], *, seed: int = 1, device: str | torch.device = "cpu",
               run=None, cache: FeatureCache | None = None, progress: bool = True) -> StagedResult:
    """Train `method` stage after stage (each through `engine.train.fit`). With a run, an interrupted
    staged run resumes in the stage and epoch it reached, with identical results."""
    if not stages:
        raise ValueError("no stages")
    names = stage_names(stages)
    epochs = [s.train.epochs for s in stages]
    offsets = [sum(epochs[:k]) for k in range(len(stages))]
    result = StagedResult()
    method.to(torch.device(device))
    first, previous, previous_results, resume = 0, [], [], None  # previous_results: {"history", "steps"}
    if run is not None:
        loaded = training_checkpoint(run, map_location=device)
        if loaded is not None:
            state = loaded[1]
            if state.get("phase") != PHASE:
                raise ValueError("the run's latest checkpoint was not written by fit_staged; reset the run")
            if len(state["previous"]) != state["stage"] or state["stage"] >= len(stages):
                raise ValueError("the run's staged checkpoint does not match these stages; reset the run")
            first, previous, previous_results = state["stage"], list(state["previous"]), list(state["previous_results"])
            for done in previous:  # parameters of finished stages, in order
                method.load_trainable_state_dict(done)
            resume = loaded
            result.resumed_from = (first, state["stage_epoch"])
    trained: dict[int, torch.nn.Parameter] = {}
    for k, stage in enumerate(stages):
        params = stage_parameter_list(method, stage)
        trained.update({id(p): p for p in params})
        if k < first:
            done = previous_results[k]
            result.stages.append(FitResult(history=list(done["history"]), steps=done["steps"]))
            continue
        select_parameters(method, params)
        if hasattr(method, "on_stage_start"):
            method.on_stage_start(stage.trains if isinstance(stage.trains, str) else k)
        stage_run = None
        if run is not None:
            stage_run = StageRun(run, k, names[k], offsets[k], sum(epochs), epochs[k], list(previous),
                                 list(previous_results), resume if k == first else None)
        res = fit(method, ds, stage.train, seed=seed + k * STAGE_SEED_STRIDE, device=device, run=stage_run,
                  cache=cache, progress=progress)
        result.stages.append(res)
        previous.append(method.trainable_state_dict())
        previous_results.append({"history": list(res.history), "steps": res.steps})
    for p in method.parameters():
        p.requires_grad_(id(p) in trained)
    for k, res in enumerate(result.stages):
        for record in res.history:
            result.history.append({**record, "epoch": offsets[k] + record["epoch"], "stage": names[k],
                                   "stage_index": k, "stage_epoch": record["epoch"]})
    return result


def lp_ft(head_train: TrainConfig, full_train: TrainConfig, head: str = "head", full: str = "all") -> list[Stage]:
    """LP-FT (Kumar et al., 2022): linear probe first (`head` parameters), then fine-tune `full`
    (typically everything, at a lower learning rate)."""
    return [Stage(head, head_train, name="lp"), Stage(full, full_train, name="ft")]


__all__ = ["Stage", "StagedResult", "StageRun", "fit_staged", "lp_ft", "select_parameters", "training_checkpoint"]
