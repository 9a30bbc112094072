"""``discopop evaluate``: any set of losses on any task over betas and fresh seeds, and the CSV and HTML it writes."""
