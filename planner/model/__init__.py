"""What the model is, per rank: parameter counts, FLOPs and activation bytes from the shape; no framework."""
