"""`aistudio-fleet`, the operator's command line: the management API from a shell (client.py speaks HTTP,
commands.py holds the commands, tables.py prints for people, migrate.py moves an old deployment in)."""
