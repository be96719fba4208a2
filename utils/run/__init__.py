"""A run's files: checkpoints, the Recorder (logs, metrics.csv, TensorBoard), reports, export and predict."""
