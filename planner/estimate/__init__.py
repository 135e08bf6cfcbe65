"""Estimates of one plan under a backend: memory at the peak moment, step time over the cluster
topology, and the combined Estimate."""
