"""The ledger's revisions, one module each, in the order of their ``down_revision`` (see :mod:`node.ledger.migrations`)."""

__all__ = []
