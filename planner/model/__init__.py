"""What the model is, per rank: parameter counts, FLOPs, activation bytes and framework-free
memory terms from the shape, and the per-rank local shape.  No framework."""
