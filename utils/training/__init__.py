"""The training loop's pieces: callbacks, DDP helpers, data sampling, seeding, schedules, metrics, EMA."""
