"""Loops that take built objects: train (meta-train), evaluate, adapt."""
