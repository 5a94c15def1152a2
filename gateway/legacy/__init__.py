"""Moving in from the old multi-instance system: read its `data/` directory (or a zip of it), plan one new
instance per old one, and apply the plan through the management API (the CLI) or the instance service (the
panel). Both faces share this planner; neither holds logic the other lacks."""
