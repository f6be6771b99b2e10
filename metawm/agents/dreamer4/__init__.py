"""Dreamer 4 (Hafner, Yan, Lillicrap 2025, "Training Agents Inside of Scalable World Models",
arXiv 2509.24527): a causal tokenizer and a shortcut-forcing dynamics transformer as the world
model, agent heads trained by behaviour cloning and then by PMPO in imagination.

Files: ``agent.py`` (the story: three phases and the metawm Agent protocol), ``transformer.py``
(the efficient block-causal space/time transformer), ``tokenizer.py``, ``dynamics.py``,
``heads.py``, ``losses.py`` (every objective, with its equation), ``dataset.py`` (recorded
episodes, uint8 frames, with or without actions), ``presets.py`` (tiny .. paper), ``pixels.py``
(pixel renderings of vector suites for CPU evidence), ``plots.py``.

Use it as an inner-loop agent (``python -m metawm.train +task=... agent=dreamer4``) or run the
paper's offline pipeline from the CLI (``python -m metawm.dreamer4 record|pretrain|finetune|imagine``).

Perceptual loss: the paper's tokenizer adds 0.2 x LPIPS, whose pretrained network weights must
be downloaded; metawm runs offline, so the term is pluggable (``Dreamer4Agent(perceptual=fn)``
with ``fn(pred, target) -> loss`` on (N, C, H, W) images in [0, 1]) and off by default.
"""

from metawm.agents.dreamer4.agent import Dreamer4Agent

__all__ = ["Dreamer4Agent"]
