"""Task families and suites: sample TaskSpecs for a split, build the environment for a spec.

A suite is a file ``tasks/NAME.yaml`` at the repository root naming a family class
(``_target_``), its default task and its per-split parameter ranges; :func:`load_suite` builds one
the way ``+task=NAME`` does (``hydra.utils.instantiate``), for tests, benchmarks and notebooks.
"""

from __future__ import annotations

from typing import Any

from metawm.tasks.base import TaskFamily


def suite_names() -> list[str]:
    from metawm import paths

    return sorted(p.stem for p in paths.TASKS.glob("*.yaml")) if paths.TASKS.is_dir() else []


def load_suite(name: str, **overrides: Any) -> TaskFamily:
    """The suite ``tasks/NAME.yaml`` with top-level keys overridden, e.g.
    ``load_suite("atari_suite", image_size=84, grayscale=True)``."""
    import hydra.utils
    from omegaconf import OmegaConf

    from metawm import paths
    from metawm.infra.errors import UserError, choices_error

    path = paths.TASKS / f"{name}.yaml"
    if not path.is_file():
        raise choices_error("task suite", name, suite_names())
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:
        raise UserError(f"{path} is not valid YAML: {e}") from None
    cfg = OmegaConf.merge(cfg, OmegaConf.create(overrides))
    try:
        return hydra.utils.instantiate(cfg)
    except Exception as e:  # hydra wraps a UserError raised by the family's constructor
        cause = e
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise
