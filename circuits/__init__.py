"""circuits: circuit discovery (tasks, patching, attribution) and the command line."""
