"""Trackers are sinks that never end a run: a failing W&B call disables W&B, nothing more."""

from metawm.infra.tracking import WandbSink


class _Broken:
    def log(self, *a, **k):
        raise ConnectionResetError("wandb service gone")

    summary = {}

    def finish(self):
        raise ConnectionResetError("wandb service gone")


def test_a_dead_wandb_service_does_not_kill_the_run(capsys):
    sink = WandbSink(mode="disabled", project="p", group=None, name="n", run_id="i", directory=".", config={})
    sink.run = _Broken()
    sink.log({"a": 1.0}, 1)  # must not raise
    assert sink.run is None and "continuing without W&B" in capsys.readouterr().err
    sink.log({"a": 2.0}, 2)
    sink.close()
