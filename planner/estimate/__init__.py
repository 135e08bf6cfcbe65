"""Estimates of one plan: memory at the peak moment, step time over the cluster topology, the combined Estimate."""
