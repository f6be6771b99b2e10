"""Size presets of the MuZero agent and how they combine with the config.

``conf/agent/muzero.yaml`` lists every hyperparameter. Keys whose good value depends on the
scale of the experiment are ``null`` there and come from the preset chosen with ``size``; any
value given in the config or on the command line wins over the preset. Network sizes come only
from the preset.

* ``tiny``  -- tests and ``+exp=smoke``: a few simulations, tiny nets, seconds per run.
* ``small`` -- vector control on a laptop CPU (the CartPole benchmark): 50 simulations, 2x128
  MLPs, Adam. Also sized for images (EfficientZero-like 64 channels, 1 block) when the suite
  has frames.
* ``base``  -- the paper's Atari network (Schrittwieser et al. 2020, appendix F: 256 channels,
  16 residual blocks per function, the downsampling stack) and its training setup (SGD with
  momentum 0.9, lr 0.05, batch 2048, n = 10, support 300); meant for a GPU.
"""

from __future__ import annotations

from typing import Any, Mapping

from metawm.infra.errors import choices_error

_ARCH_TINY = dict(mlp_hidden=32, latent=16, mlp_layers=1, channels=16, down_blocks=(1, 1, 1), res_blocks=1,
                  reduced_channels=4, head_hidden=32, lstm_hidden=16, proj_hidden=32, proj_out=16)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        _ARCH_TINY, num_simulations=8, n_step=5, value_support=20, reward_support=5, batch_size=16,
        optimizer="adam", lr=3e-3, lr_warmup=0, lr_decay_rate=1.0, lr_decay_steps=1, grad_clip=5.0,
        replay_ratio=0.25, learning_starts=64,
        replay_capacity=20_000, frame_stack=1, image_frame_stack=2, reanalyze_fraction=0.0,
        reanalyze_simulations=8, value_target="network", target_update_interval=50,
        temperature_schedule=[[0, 1.0]], priority_alpha=1.0, priority_beta=1.0),
    "small": dict(
        mlp_hidden=128, latent=64, mlp_layers=2, channels=64, down_blocks=(1, 1, 1), res_blocks=1,
        reduced_channels=16, head_hidden=32, lstm_hidden=64, proj_hidden=256, proj_out=64,
        num_simulations=50, n_step=10, value_support=25, reward_support=5, batch_size=128,
        optimizer="adam", lr=3e-3, lr_warmup=500, lr_decay_rate=0.1, lr_decay_steps=15_000, grad_clip=5.0,
        replay_ratio=0.5, learning_starts=1000,
        replay_capacity=100_000, frame_stack=1, image_frame_stack=4, reanalyze_fraction=0.0,
        reanalyze_simulations=25, value_target="network", target_update_interval=100,
        temperature_schedule=[[0, 1.0], [3000, 0.5], [6000, 0.25]], priority_alpha=1.0, priority_beta=1.0),
    "base": dict(
        mlp_hidden=512, latent=256, mlp_layers=2, channels=256, down_blocks=(2, 3, 3), res_blocks=16,
        reduced_channels=16, head_hidden=256, lstm_hidden=512, proj_hidden=1024, proj_out=1024,
        num_simulations=50, n_step=10, value_support=300, reward_support=300, batch_size=2048,
        optimizer="sgd", lr=0.05, lr_warmup=1000, lr_decay_rate=0.1, lr_decay_steps=350_000, grad_clip=0.0,
        replay_ratio=0.25, learning_starts=20_000,
        replay_capacity=1_000_000, frame_stack=1, image_frame_stack=32, reanalyze_fraction=0.0,
        reanalyze_simulations=50, value_target="stored", target_update_interval=1000,
        temperature_schedule=[[0, 1.0], [500_000, 0.5], [750_000, 0.25]], priority_alpha=1.0, priority_beta=1.0),
}


def resolve(size: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The preset of ``size`` overlaid with every non-null value of ``given``."""
    if size not in PRESETS:
        raise choices_error("MuZero size preset", size, PRESETS,
                            "Set agent.size=NAME (tests and +exp=smoke use tiny).")
    return {**PRESETS[size], **{k: v for k, v in given.items() if v is not None}}
