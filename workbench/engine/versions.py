"""Behaviour version of the engine (training loop, schedules, evaluation, few-shot sampling).

A run's identity includes this number, so bumping it makes every run made before the change count as
stale: it is never reused and `runs list` marks it. Bump it in the commit of any fix that changes results,
and add a line below saying what changed.

History:
  1  the engine as of the first three sessions
"""
ENGINE_VERSION = 1
