"""Raft replication of the storage state machine (built in the cluster issue)."""
