"""Gymnasium adapters for the task suites, batched stepping, and exact environment snapshots."""
