"""Lambda entry points named by template.yaml; thin adapters over rung's engine."""
