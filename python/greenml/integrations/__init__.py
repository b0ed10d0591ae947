"""Integrations with trainers, experiment trackers and dashboards (optional extras)."""
