"""A plan: one training strategy as an immutable value (and many as columns), its parallel degrees
as one value, and the form of the rules that accept or reject it."""
