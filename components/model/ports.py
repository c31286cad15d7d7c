"""Ports the edge itself listens on, beside the services' own: one definition for the
config check that keeps services off them, the host and provider firewalls, and the
renderings that point health checkers at them."""

HEALTH_AGENT_PORT = 8053
"""The edges' health agent (``cloud-init/cgnat-edge-health.py``), in every DNS mode."""
