"""Verifiable task worlds (filled by the tasks room)."""
