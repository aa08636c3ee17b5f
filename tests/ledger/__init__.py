"""Tests of node.ledger and the admin commands on it."""
