"""Project tooling: new models and projects (scaffold), the config keys' reference, SLURM jobs."""
