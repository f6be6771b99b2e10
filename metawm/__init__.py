"""metawm: meta-RL over populations of world-model agents.

The layers import only downward: ``types``/``protocols`` -> ``ops`` -> ``envs``/``tasks``/``data``
-> ``agents``/``meta`` -> ``run`` -> ``infra`` composition roots (``train``, ``sweep``, ``adapt``).
"""

__version__ = "0.1.0"
