"""Building objects from config nodes at the composition root, with user-facing errors."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from metawm.infra.errors import UserError


def instantiate(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` whose failures name the config group and the cause.

    A UserError raised by the constructor (e.g. an agent refusing an action space) passes
    through unchanged; a TypeError (an unknown or missing key) becomes a UserError that lists the
    keys the config gave.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e.__context__
        while isinstance(cause, InstantiationException) and (cause.__cause__ or cause.__context__):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, UserError):
            raise cause from None
        keys = ", ".join(k for k in OmegaConf.to_container(node) if not k.startswith("_"))
        raise UserError(f"Could not build the {what} from its config ({type(cause).__name__ if cause else ''}: "
                        f"{cause or e}). Its config sets: {keys}.") from None
    except UserError:
        raise
    except TypeError as e:
        raise UserError(f"Could not build the {what} from its config: {e}.") from None


def strip_names(node: DictConfig) -> DictConfig:
    """A copy of ``node`` without the bookkeeping key ``name`` (used in paths, not a kwarg)."""
    data = OmegaConf.to_container(node, resolve=True)
    data.pop("name", None)
    return OmegaConf.create(data)
