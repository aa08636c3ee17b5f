"""Flow tests: queue, completeness, sender, service, end to end."""
