"""The operator's view of the node: status, admin actions (CLI now, the web page later)."""
