"""Experience storage shared by agents: :class:`~metawm.data.replay.SequenceReplay`."""

from metawm.data.replay import SequenceReplay

__all__ = ["SequenceReplay"]
