"""Model sizes of DreamerV3 (Hafner et al., Nature 2025, "Model sizes" table; authors'
``configs.yaml`` ``size1m`` ... ``size400m``) and two CPU presets.

One width d sets everything: hidden units d, GRU state ``deter = 8 d``, ``classes = d / 16``
classes for each of the 32 latents, CNN base depth ``d / 16`` (channels 2, 3, 4, 4 times it).

========  =====  ======  =======  =====  ======
preset    d      deter   classes  depth  params (Atari, 18 actions, approx.)
========  =====  ======  =======  =====  ======
size1m    64     512     4        4
size12m   256    2048    16       16
size25m   384    3072    24       24
size50m   512    4096    32       32
size100m  768    6144    48       48
size200m  1024   8192    64       64
size400m  1536   12288   96       96
========  =====  ======  =======  =====  ======

(``DreamerV3Agent.info()`` reports the exact parameter count of the model it built; counts
depend on the observation and action spaces.)

Training hyperparameters are the same for every paper size (lr 4e-5, batch 16 x 64). The CPU
presets deviate, and say so:

* ``tiny`` (tests, smoke runs): d = 32 with 8 latents of 4 classes, batch 4 x 16, lr 1e-3, so a
  gradient step takes tens of milliseconds on 2 cores and training starts after 64 steps.
* ``small`` (the CartPole benchmark on 2 cores): the ``size1m`` widths (d = 64) but lr 1e-4 and
  batch 16 x 64. Why the higher lr: at 4e-5 and the replay ratios a CPU budget allows, the
  model learns too slowly for a 20k-step budget; 1e-4 was stable in our runs (see the benchmark).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from metawm.infra.errors import choices_error


@dataclasses.dataclass(frozen=True)
class Preset:
    units: int          # d: MLP width, RSSM hidden size
    deter: int          # GRU state, 8 d
    classes: int        # classes per latent, d / 16
    depth: int          # CNN base depth, d / 16
    stoch: int = 32     # number of categorical latents
    blocks: int = 8     # GRU blocks
    lr: float = 4e-5
    batch_size: int = 16
    batch_length: int = 64
    imag_last: int = 0  # imagine from the last K steps of each sequence (0: all, the paper)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _paper(d: int) -> Preset:
    return Preset(units=d, deter=8 * d, classes=d // 16, depth=d // 16)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(units=32, deter=64, classes=4, depth=2, stoch=8, lr=1e-3, batch_size=4, batch_length=16),
    "small": Preset(units=64, deter=256, classes=4, depth=4, lr=3e-4, batch_size=16, batch_length=32, imag_last=8),
    "size1m": _paper(64),
    "size12m": _paper(256),
    "size25m": _paper(384),
    "size50m": _paper(512),
    "size100m": _paper(768),
    "size200m": _paper(1024),
    "size400m": _paper(1536),
}


def get(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a UserError that lists the presets."""
    if name not in PRESETS:
        raise choices_error("DreamerV3 size preset (agent.size)", name, PRESETS,
                            "tiny/small are CPU presets; size1m ... size400m are the paper's.")
    return PRESETS[name]
