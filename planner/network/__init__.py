"""The cluster's network: a networkx graph of GPUs, switches and NICs, the bandwidth a process
group gets from where its ranks sit, and the alpha-beta cost of NCCL's collectives."""
