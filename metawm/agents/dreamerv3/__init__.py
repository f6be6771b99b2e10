"""DreamerV3 (Hafner et al., Nature 2025): world model, imagination actor-critic, presets.

``agent=dreamerv3`` builds :class:`~metawm.agents.dreamerv3.agent.DreamerV3Agent`; read
``agent.py`` top to bottom for the algorithm, ``nets.py`` for the networks, ``losses.py`` for the
loss functions and ``presets.py`` for the model sizes.
"""

from metawm.agents.dreamerv3.agent import DreamerV3Agent

__all__ = ["DreamerV3Agent"]
