"""Wire protocol, servers, client library and CLI."""
