"""Outer loops. Each conforms to :class:`metawm.protocols.MetaLearner`."""
