"""Build jobs: load sensing, scheduling, remote execution, files, Rakefiles."""
