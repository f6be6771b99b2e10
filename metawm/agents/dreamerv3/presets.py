"""Model sizes of DreamerV3 (Hafner et al., Nature 2025, "Model sizes" table; authors'
``configs.yaml`` ``size1m`` ... ``size400m``) and two CPU presets.

One width d sets everything: hidden units d, GRU state ``deter = 8 d``, ``classes = d / 16``
classes for each of the 32 latents, CNN base depth ``d / 16`` (channels 2, 3, 4, 4 times it).

========  =====  ======  =======  =====  ===============================
preset    d      deter   classes  depth  trainable params here (64x64x3, 18 actions)
========  =====  ======  =======  =====  ===============================
tiny      32     64      4 (x8)   2      0.1M   (CPU tests)
small     64     256     4        4      0.4M   (CPU benchmark)
size1m    64     512     4        4      0.7M
size12m   256    2048    16       16     10.3M
size25m   384    3072    24       24     23.1M
size50m   512    4096    32       32     41.0M
size100m  768    6144    48       48     92.1M
size200m  1024   8192    64       64     163.5M
size400m  1536   12288   96       96     367.3M
========  =====  ======  =======  =====  ===============================

The paper's names count somewhat more: its Atari inputs are 96x96 (a 6x6 instead of 4x4 map
between CNN and RSSM, which more than doubles the decoder's input layers) and its convolutions use
5x5 kernels; here images are 64x64 with 4x4 stride-2 kernels. ``DreamerV3Agent.info()`` reports
the exact count of the model it built (it depends on the observation and action spaces).

Training hyperparameters are the same for every paper size (lr 4e-5, batch 16 x 64). The CPU
presets deviate, and say so:

* ``tiny`` (tests, smoke runs): d = 32 with 8 latents of 4 classes, batch 4 x 16, lr 1e-3, so a
  gradient step takes tens of milliseconds on 2 cores and training starts after 64 steps.
* ``small`` (the CartPole benchmark on 2 cores): d = 64 (64 units, 32 latents of 4 classes, CNN
  depth 4) but a GRU state of 256 (4 d instead of 8 d), batch 16 x 32 instead of 16 x 64,
  imagination from the last 8 steps of each sequence (128 starts instead of 1024; the authors'
  ``imag_last``) and lr 3e-4. Why: on a CPU a gradient step costs time in proportion to the
  sequence length (the RSSM scan is sequential) and the number of imagined states, and a 20k-step
  budget needs a few thousand gradient steps; with these settings a step is roughly 2x cheaper
  than the paper's d = 64 model (``size1m``) and CartPole is learned within 20k env steps at
  replay ratio 128 (see ``benchmarks/dreamerv3_cartpole.py``). The higher learning rate makes the
  few thousand steps count; it was stable in our runs.
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
