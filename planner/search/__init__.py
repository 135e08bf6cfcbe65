"""The search: candidate plans, the rules that reject them, ranking, and the nearest fix."""
