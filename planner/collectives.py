"""Alpha-beta cost of NCCL collectives (Thakur et al. 2005; NCCL's ring algorithms): a ring
over n ranks takes n - 1 steps per phase, each paying the hop latency, and moves (n - 1)/n of
the buffer per phase at the group's bandwidth.  All-reduce may also use NCCL's tree, whose
latency grows with log2(n); the cheaper of the two is taken.  ``size`` is the buffer in bytes
(the full tensor each rank contributes or receives); ``count`` is how many collectives it is
split into, each paying the latency once (buckets, or one per module for ZeRO-3's gathers)."""
from __future__ import annotations

import math

from .topology import Link


def all_reduce(size: float, link: Link, efficiency: float, count: int = 1) -> float:
    n = link.ranks
    if n == 1:
        return 0.0
    bw = link.bandwidth * efficiency
    ring = 2 * (n - 1) / n * size / bw + count * 2 * (n - 1) * link.latency
    tree = 2 * size / bw + count * 2 * math.ceil(math.log2(n)) * link.latency
    return min(ring, tree)


def reduce_scatter(size: float, link: Link, efficiency: float, count: int = 1) -> float:
    n = link.ranks
    if n == 1:
        return 0.0
    return (n - 1) / n * size / (link.bandwidth * efficiency) + count * (n - 1) * link.latency


def all_gather(size: float, link: Link, efficiency: float, count: int = 1) -> float:
    return reduce_scatter(size, link, efficiency, count)


def p2p(size: float, link: Link, efficiency: float) -> float:
    return size / (link.bandwidth * efficiency) + link.latency
