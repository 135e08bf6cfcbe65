"""Alpha-beta cost of NCCL collectives (Thakur et al. 2005; NCCL's ring algorithms): a ring
over n ranks takes n - 1 steps per phase, each paying the hop latency, and moves (n - 1)/n of
the buffer per phase at the group's bandwidth.  All-reduce may also use NCCL's tree, whose
latency grows with log2(n); the cheaper of the two is taken.  ``size`` is the buffer in bytes
(the full tensor each rank contributes or receives); ``count`` is how many collectives it is
split into, each paying the latency once (buckets, or one per module for ZeRO-3's gathers)."""
from __future__ import annotations

import numpy as np

from planner.network.topology import Link
from planner.plan.strategy import where


def all_reduce(size, link: Link, efficiency: float, count=1):
    n = link.ranks
    bw = link.bandwidth * efficiency
    ring = 2 * (n - 1) / n * size / bw + count * 2 * (n - 1) * link.latency
    tree = 2 * size / bw + count * 2 * np.ceil(np.log2(n)) * link.latency
    return where(n == 1, 0.0, np.minimum(ring, tree))


def reduce_scatter(size, link: Link, efficiency: float, count=1):
    n = link.ranks
    return (n - 1) / n * size / (link.bandwidth * efficiency) + count * (n - 1) * link.latency


def all_gather(size, link: Link, efficiency: float, count=1):
    return reduce_scatter(size, link, efficiency, count)


def all_to_all(size, link: Link, efficiency: float, count=1):
    """Each rank sends (n - 1)/n of its ``size`` bytes, a share to every other rank (pairwise
    exchange, NCCL's alltoall): the same wire time as a reduce-scatter, n - 1 steps of latency."""
    n = link.ranks
    return where(n == 1, 0.0, (n - 1) / n * size / (link.bandwidth * efficiency)
                 + count * (n - 1) * link.latency)


def p2p(size, link: Link, efficiency: float):
    return where(link.ranks == 1, 0.0, size / (link.bandwidth * efficiency) + link.latency)
