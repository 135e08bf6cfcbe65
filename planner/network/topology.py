"""The cluster as a networkx graph (GPUs, the node's NVSwitch/NVLink/PCIe fabric, NICs, leaf and
spine switches) and the bandwidth a communication group gets from where its ranks sit.

Where ranks sit comes from the plan's Degrees (planner/plan/degrees.py: tp innermost, then dp,
then pp, or the other orders in ORDERS); here a group is the set
of ranks {start + i·stride}; its ring (or the per-channel rings NCCL builds, one per NIC it can
use) is limited by the slowest of: the intra-node link, and the node's network injection shared
by the group's members on that node, divided by the spine's oversubscription when the group
spans leaves.  Rail-optimised nodes give every GPU its own NIC.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import networkx as nx
import numpy as np

from planner.spec.spec import ClusterSpec

GB = 1e9


@dataclass(frozen=True)
class Link:
    """One group's effective per-rank bandwidth (bytes/s, one direction) and hop latency (s);
    arrays when describing one group per candidate plan."""

    bandwidth: Any
    latency: Any
    ranks: Any
    nodes: Any


def build_graph(cluster: ClusterSpec) -> nx.Graph:
    """GPUs hang off their node's switch (NVSwitch, or a PCIe root) at the per-direction link
    speed and off their NIC (GPU i uses NIC i mod nics); NICs connect to leaf switches, leaves to a
    spine with the configured oversubscription.  Capacities are bytes/s per direction."""
    g = nx.Graph()
    net, intra = cluster.inter_node, cluster.intra_node
    nic_bytes = net.nic_gbit / 8 * GB
    for node in range(cluster.nodes):
        leaf = ("leaf", node // net.nodes_per_leaf)
        g.add_edge(leaf, ("spine",), capacity=net.nodes_per_leaf * net.node_gbps * GB
                   / net.oversubscription)
        for nic in range(net.nics_per_node):
            g.add_edge(("nic", node, nic), leaf, capacity=nic_bytes)
        for gpu in range(cluster.gpus_per_node):
            g.add_edge(("gpu", node, gpu), ("switch", node), capacity=intra.gbps / 2 * GB)
            g.add_edge(("gpu", node, gpu), ("nic", node, gpu % net.nics_per_node),
                       capacity=cluster.gpu.pcie_gbps * GB)
    return g


def _path_capacity(g: nx.Graph, a, b) -> float:
    path = nx.shortest_path(g, a, b)
    return min(g.edges[u, v]["capacity"] for u, v in zip(path, path[1:]))


def group_link(cluster: ClusterSpec, size, stride) -> Link:
    """Bandwidth of a group of ``size`` ranks ``stride`` apart (one of many such groups that run
    at once, e.g. every dp group of a plan).  Arrays of sizes and strides give a Link of arrays,
    each distinct group shape worked out once."""
    fabric = _Fabric(cluster)
    if not isinstance(size, np.ndarray) and not isinstance(stride, np.ndarray):
        return _group_link(fabric, int(size), int(stride))
    size, stride = np.broadcast_arrays(size, stride)
    pairs, inverse = np.unique(np.stack([size, stride]), axis=1, return_inverse=True)
    links = [_group_link(fabric, int(a), int(b)) for a, b in pairs.T]
    column = lambda attr: np.array([getattr(k, attr) for k in links])[inverse.ravel()]  # noqa
    return Link(column("bandwidth"), column("latency"), column("ranks"), column("nodes"))


@dataclass(frozen=True)
class _Fabric:
    """The hashable part of a cluster that communication depends on (a cache key)."""

    cluster: ClusterSpec

    def __hash__(self) -> int:
        c = self.cluster
        return hash((c.nodes, c.gpus_per_node, c.intra_node, c.inter_node, c.gpu.pcie_gbps))

    def __eq__(self, other) -> bool:
        return isinstance(other, _Fabric) and hash(self) == hash(other)


@lru_cache(maxsize=4096)
def _group_link(fabric: _Fabric, size: int, stride: int) -> Link:
    cluster = fabric.cluster
    gpn = cluster.gpus_per_node
    nodes = len({(i * stride) // gpn for i in range(size)})
    per_node = size // nodes
    g = _graph(cluster)
    intra = g.edges[("gpu", 0, 0), ("switch", 0)]["capacity"]
    if nodes == 1:
        return Link(intra, cluster.intra_node.latency_us * 1e-6, size, 1)
    net = cluster.inter_node
    # every GPU of a node talks at once (its own groups), so each gets 1/gpn of the node's
    # injection bandwidth, or less if its path to the leaf (PCIe, NIC) is slower
    per_gpu = min(_path_capacity(g, ("gpu", 0, 0), ("leaf", 0)), net.node_gbps * GB / gpn)
    node_out = per_node * per_gpu
    if nodes > net.nodes_per_leaf:
        node_out /= net.oversubscription
    return Link(min(intra, node_out), net.latency_us * 1e-6, size, nodes)


def _graph(cluster: ClusterSpec) -> nx.Graph:
    """Two nodes are enough: a group's bandwidth only needs one node's links and its uplink; so
    every cluster of two nodes or more with the same node shares one graph (built once)."""
    key = (min(cluster.nodes, 2), cluster.gpus_per_node, cluster.intra_node, cluster.inter_node,
           cluster.gpu.pcie_gbps)
    if key not in _GRAPHS:
        _GRAPHS[key] = build_graph(cluster.model_copy(update={"nodes": key[0]}))
    return _GRAPHS[key]


_GRAPHS: dict[tuple, nx.Graph] = {}
