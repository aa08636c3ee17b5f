"""The operator's view: status, node lock, retention, notifications (``node.ops``)."""
