"""Behaviour version of the engine (training loop, schedules, evaluation, few-shot sampling).

A run's identity includes this number, so bumping it makes every run made before the change count as
stale: it is never reused and `runs list` marks it. Bump it in the commit of any fix that changes results,
and add a line below saying what changed.

History:
  1  the engine as of the first three sessions
  2  per-epoch cosine recounts after warm-up as Dassl does (first epoch after warm-up at the peak lr);
     per-iteration cosine ends at CLIP-LoRA's eta_min 1e-6; modules a method trains (LoRA and adapters
     inside the backbone included) run in train mode, so their dropout acts; only all-frozen sub-trees
     stay in eval; few-shot sampling keeps a class with fewer than k items once (Dassl's repeat=False),
     split files at FEW_SHOT_SPLIT_VERSION 2
  3  training settings grow train.grad_transform / grad_rho / grad_alpha / grad_delta (SAM, GradReg):
     results with the default "none" are unchanged, but every spec's resolved training settings (and so
     its hash) gain these fields; the bump marks earlier runs stale rather than "not fully resolved"
"""
ENGINE_VERSION = 3
