"""A plan: one training strategy as an immutable value (and many as columns), its parallel degrees and the per-rank local shape."""
