"""The client library is light: a program that only publishes loads the wire-facing model,
the RPC codec and msgpack, never the engine, RocksDB, Raft or the HTTP server."""
import json
import subprocess
import sys

HEAVY = ("rocksdict", "pysyncobj", "aiohttp", "cluster", "storage", "api.server", "api.cli", "sortedcontainers")


def _loaded_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout))


def test_client_import_loads_neither_engine_nor_raft_nor_http():
    loaded = _loaded_after("from api.client import connect")
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == []
    assert {"msgpack", "jetstream.config", "jetstream.errors", "jetstream.results", "api.protocol"} <= loaded


def test_engine_import_does_load_rocksdb():
    # The check above would pass vacuously if the probe could not see what an import pulls in.
    assert "rocksdict" in _loaded_after("import storage")
