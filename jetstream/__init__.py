"""The wire-facing JetStream model: configs, results, errors with JetStream's codes, and
the subject grammar. Pure data and rules, no I/O: the engine (`storage`) builds on it and
the client library needs nothing else."""
