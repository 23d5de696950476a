"""The engine's own errors (the JetStream ones are in `jetstream.errors`)."""


class StoreCorruptError(RuntimeError):
    """The on-disk state cannot be trusted; the node must refuse to start."""
