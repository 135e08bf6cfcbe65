"""Capacity questions over the search: scaling laws, budget mode, what-if and sweeps, inverse
questions and the nearest fix."""
