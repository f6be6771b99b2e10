"""Reptile's members as the tasks of a real SLURM job array (the single-node cluster of
slurm/start_local.sh): the same metrics as members run inline."""

from __future__ import annotations

import pytest
import torch

from metawm.infra import launch

torch.set_num_threads(1)
_why = launch.slurm_reachable()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_why is not None, reason=f"no SLURM reachable ({_why}); start "
                                                    "it with: eval \"$(bash slurm/start_local.sh)\"")]


def test_reptile_members_as_a_slurm_job_array_match_inline(tmp_path):
    from metawm.train import main

    args = ["+task=point_nav", "agent=mpc", "meta=reptile", "+exp=smoke", "tracker=disabled", "progress=false",
            "plots=false", "steps=200", "eval.every=200", "eval.tasks=1", "eval.splits=[test]"]
    assert main([*args, f"run_dir={tmp_path / 'inline'}"]) == 0
    assert main([*args, "meta.runner=slurm", "meta.cluster=local", f"meta.slurm_folder={tmp_path / 'jobs'}",
                 f"run_dir={tmp_path / 'slurm'}"]) == 0
    assert (tmp_path / "slurm" / "metrics.jsonl").read_bytes() == (tmp_path / "inline" / "metrics.jsonl").read_bytes()
    assert list((tmp_path / "jobs").glob("*/*_result.pkl")) or list((tmp_path / "jobs").glob("*"))
