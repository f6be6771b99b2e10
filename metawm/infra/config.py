"""Hydra composition behind a CLI that fails politely.

metawm composes configs with Hydra's compose API rather than ``@hydra.main`` because a user's
mistake must give a one-paragraph message listing the valid choices with exit status 2 (Hydra's
app exits 1 and, for some errors, prints a traceback), and because run directories, sweeps and
launching are metawm's own (``hydra.main`` would create output folders and own multirun).

Groups come from ``conf/<group>/*.yaml`` plus the top-level ``tasks/`` folder (group ``task``),
``sweeps/`` (group ``sweep``) and ``slurm/`` (group ``cluster``), registered in Hydra's
ConfigStore so that ``+task=NAME`` selects a suite file.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, OmegaConf

from metawm import paths
from metawm.infra.errors import UserError, choices_error

# group name -> folder holding one YAML file per choice
EXTRA_GROUPS = {"task": paths.TASKS, "sweep": paths.SWEEPS, "cluster": paths.SLURM}


def group_choices(group: str) -> list[str]:
    folder = EXTRA_GROUPS.get(group, paths.CONF / group)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def groups() -> list[str]:
    conf_groups = [p.name for p in paths.CONF.iterdir() if p.is_dir()] if paths.CONF.is_dir() else []
    return sorted(set(conf_groups) | set(EXTRA_GROUPS))


@functools.lru_cache(maxsize=None)
def _register_extra_groups() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, folder in EXTRA_GROUPS.items():
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            try:
                node = OmegaConf.load(path)
            except Exception as e:
                raise UserError(f"{path} is not valid YAML: {e}") from None
            cs.store(group=group, name=path.stem, node=node)


def _parse(argv: Iterable[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    parsed = []
    for arg in argv:
        try:
            parsed.extend(parser.parse_overrides([arg]))
        except OverrideParseException as e:
            raise UserError(f"Malformed override {arg!r}: {str(e).splitlines()[0]} Overrides look like "
                            "key=value, +key=value (add) or ~key (delete), e.g. +task=cartpole_physics seed=1.") from None
    return parsed


def normalize(argv: list[str]) -> list[str]:
    """Accept ``task=X`` as well as ``+task=X`` (task is not in the defaults list, see FACTS)."""
    return ["+" + a if a.startswith(("task=", "exp=")) else a for a in argv]


def validate_choices(argv: list[str], *, required: Iterable[str] = ("task",)) -> None:
    """Check every group choice against the files on disk before Hydra sees it."""
    known_groups = groups()
    given = set()
    for ov in _parse(argv):
        key = ov.key_or_group
        if key not in known_groups:
            continue
        given.add(key)
        if ov.is_delete():
            continue
        value = ov.value()
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is None or str(v) == "":
                plus = "+" if key in ("task", "exp") else ""
                raise UserError(f"No {key} given after {plus}{key}=. Valid choices: "
                                f"{', '.join(group_choices(key))}. Pick one with {plus}{key}=NAME.")
            if str(v) not in group_choices(key):
                raise choices_error(key, str(v), group_choices(key))
    for key in required:
        if key not in given:
            raise UserError(f"No {key} given. Choose one with +{key}=NAME from: "
                            f"{', '.join(group_choices(key))}.")


def compose(config_name: str, argv: list[str], *, required: Iterable[str] = ("task",)) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with the user's overrides into a resolved config."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    argv = normalize(list(argv))
    validate_choices(argv, required=required)
    _register_extra_groups()
    try:
        with initialize_config_dir(config_dir=str(paths.CONF), version_base="1.3", job_name=config_name):
            cfg = hydra_compose(config_name=config_name, overrides=argv)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(f"The configuration could not be composed: {_first_lines(e)}") from None
    return cfg


def _first_lines(e: Exception, n: int = 3) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return " ".join(lines[:n])


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def usage(entry: str, config_name: str) -> str:
    lines = [f"usage: python -m metawm.{entry} +task=NAME [group=CHOICE ...] [key=value ...]", "",
             "Config groups and their choices:"]
    for g in groups():
        prefix = "+" if g in ("task", "exp") else ""
        lines.append(f"  {prefix}{g}: {', '.join(group_choices(g))}")
    lines += ["", "Other options: --cfg prints the composed config and exits; --help shows this.",
              f"Defaults: conf/{config_name}.yaml"]
    return "\n".join(lines)


def load_run_config(path: Path) -> DictConfig:
    try:
        return OmegaConf.load(path)
    except Exception as e:
        raise UserError(f"{path} is not a readable config: {e}") from None
