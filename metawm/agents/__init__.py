"""Inner-loop agents. Each one conforms to :class:`metawm.protocols.Agent`."""
