"""Infrastructure: seeding, device, errors, checkpoints, tracking, run directories, config."""
