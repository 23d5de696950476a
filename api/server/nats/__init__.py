"""The NATS client protocol and the JetStream JSON API, as a second front on the same engine."""
