# One raftbroker node. Configure it with RAFTBROKER_* environment variables (every
# `raftbroker server` flag has one), flags after the image name, or a TOML file
# (--config / RAFTBROKER_CONFIG). docker-compose.cluster.yml runs three of them.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what `pip install .` needs: pyproject.toml names README.md as the readme and
# these five packages in [tool.setuptools] packages.
COPY pyproject.toml README.md ./
COPY jetstream ./jetstream
COPY storage ./storage
COPY cluster ./cluster
COPY api ./api
COPY chaos ./chaos
RUN pip install . && rm -rf /src

# Not root: the Raft port unpickles what authenticated peers send. A named volume
# mounted on /data starts out with this directory's owner.
RUN useradd --system --uid 10001 --home-dir /data raftbroker \
    && mkdir -p /data && chown raftbroker:raftbroker /data
USER raftbroker
WORKDIR /data
VOLUME /data

ENV RAFTBROKER_DATA=/data

# 4222 clients, 8222 HTTP (/healthz /raftz /digest), 6222 Raft.
EXPOSE 4222 4322 8222 6222

ENTRYPOINT ["raftbroker", "server"]
