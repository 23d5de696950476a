"""Tests use the chaos suite's cluster of real node processes (see chaos/cluster.py)."""
from chaos.cluster import Cluster, Node, free_ports  # noqa: F401
