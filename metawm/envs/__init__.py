"""Gymnasium adapters for the task suites, batched stepping, and exact environment snapshots.

Each adapter module builds one kind of environment following the conventions of
:mod:`metawm.types` (float32 vector or uint8 HWC image observations; Discrete or Box(-1, 1)
actions), unseeded; ``rollout`` steps lists of them with an agent; ``snapshot`` captures and
restores any of them mid-episode. The task families in :mod:`metawm.tasks` map a
:class:`~metawm.types.TaskSpec` to these builders. Backends are imported lazily inside the
builders, so importing a suite does not pay for MuJoCo, Meta-World or ALE unless it uses them.
"""
