"""Fan-out: settings, the task command line and resources, the submitit task."""
