"""Moving in from the old multi-instance system: planner, archive checks, the CLI, the panel page."""
