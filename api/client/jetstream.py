"""The JetStream context (`nc.jetstream()`): streams, consumers, publish with acks, pull and push
subscriptions, shaped like nats-py's."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Awaitable, Callable

from jetstream.config import ConsumerConfig, StreamConfig
from jetstream.errors import ConsumerNotFoundError, JSError, StreamNotFoundError
from jetstream.results import ConsumerInfo, PubAck, PurgeResponse, StreamInfo
from .msg import Msg, Subscription, js_msg

if TYPE_CHECKING:
    from .connection import Client


class PullSubscription:
    def __init__(self, js: "JetStreamContext", stream: str, consumer: str):
        self._js = js
        self.stream = stream
        self.consumer = consumer

    async def fetch(self, batch: int = 1, timeout: float | None = 5.0, max_bytes: int | None = None) -> list[Msg]:
        """Up to `batch` messages; an empty list when none came within `timeout`."""
        timeout = 5.0 if timeout is None else timeout
        body = {"stream": self.stream, "consumer": self.consumer, "batch": batch, "expires": timeout,
                "no_wait": timeout <= 0, "max_bytes": max_bytes or 0}
        nc = self._js._nc
        r = await nc._request("fetch", body, timeout + nc.timeout, idempotent=True,
                              attempt=timeout + nc.attempt_timeout)
        return [js_msg(self._js._nc, d) for d in r["msgs"]]

    async def consumer_info(self) -> ConsumerInfo:
        return await self._js.consumer_info(self.stream, self.consumer)

    async def unsubscribe(self) -> None:
        """Pull subscriptions hold nothing on the server; the durable stays."""


class JetStreamContext:
    def __init__(self, nc: Client, timeout: float):
        self._nc = nc
        self.timeout = timeout

    async def _api(self, op: str, body: dict, timeout: float | None = None, idempotent: bool = False):
        return await self._nc._request(op, body, timeout or self.timeout, idempotent)

    # -- streams ------------------------------------------------------------------------
    async def add_stream(self, config: StreamConfig | None = None, **params) -> StreamInfo:
        cfg = (config or StreamConfig()).evolve(**params) if params else (config or StreamConfig())
        return StreamInfo.from_dict(await self._api("stream.add", cfg.to_dict(), idempotent=True))

    async def update_stream(self, config: StreamConfig | None = None, **params) -> StreamInfo:
        cfg = (config or StreamConfig()).evolve(**params) if params else config
        return StreamInfo.from_dict(await self._api("stream.update", cfg.to_dict()))

    async def delete_stream(self, name: str) -> bool:
        return (await self._api("stream.delete", {"name": name}))["success"]

    async def stream_info(self, name: str) -> StreamInfo:
        return StreamInfo.from_dict(await self._api("stream.info", {"name": name}, idempotent=True))

    async def streams_info(self) -> list[StreamInfo]:
        return [StreamInfo.from_dict(d) for d in (await self._api("stream.list", {}, idempotent=True))["streams"]]

    async def stream_names(self, subject: str | None = None) -> list[str]:
        return (await self._api("stream.names", {"subject": subject}, idempotent=True))["streams"]

    async def find_stream_name_by_subject(self, subject: str) -> str:
        names = await self.stream_names(subject)
        if not names:
            raise StreamNotFoundError()
        return names[0]

    async def purge_stream(self, name: str, subject: str | None = None, keep: int | None = None,
                           seq: int | None = None) -> bool:
        r = await self._api("stream.purge", {"name": name, "filter": subject, "keep": keep, "seq": seq})
        return PurgeResponse.from_dict(r).success

    async def get_msg(self, stream_name: str, seq: int | None = None, subject: str | None = None,
                      next: bool = False) -> Msg:  # noqa: A002 - nats-py's name
        body = {"name": stream_name, "seq": seq}
        if subject:
            body["next_by_subj" if next else "last_by_subj"] = subject
        d = await self._api("msg.get", body, idempotent=True)
        m = Msg(subject=d["subject"], data=d["data"], headers=d.get("headers"), _client=self._nc)
        m.seq, m.time = d["seq"], d["time"]
        return m

    async def get_last_msg(self, stream_name: str, subject: str) -> Msg:
        return await self.get_msg(stream_name, subject=subject)

    async def delete_msg(self, stream_name: str, seq: int) -> bool:
        return (await self._api("msg.delete", {"name": stream_name, "seq": seq}))["success"]

    # -- publish -------------------------------------------------------------------------
    def _pub_body(self, subject, payload, headers, msg_id, stream, expected) -> dict:
        h = dict(headers or {})
        h["Nats-Msg-Id"] = msg_id or h.get("Nats-Msg-Id") or \
            f"{self._nc._msg_id_prefix}{next(self._nc._msg_ids)}"
        if stream:
            h["Nats-Expected-Stream"] = stream
        for k, v in expected.items():
            if v is not None:
                h[k] = str(v)
        return {"subject": subject, "data": payload, "headers": h}

    def _start_publish(self, subject: str, payload: bytes = b"", timeout: float | None = None,
                       stream: str | None = None, headers: dict | None = None, msg_id: str | None = None,
                       expected_last_seq: int | None = None, expected_last_subject_seq: int | None = None,
                       expected_last_msg_id: str | None = None) -> asyncio.Future:
        body = self._pub_body(subject, payload, headers, msg_id, stream, {
            "Nats-Expected-Last-Sequence": expected_last_seq,
            "Nats-Expected-Last-Subject-Sequence": expected_last_subject_seq,
            "Nats-Expected-Last-Msg-Id": expected_last_msg_id})
        return self._nc._publisher.submit(body, timeout or self.timeout)

    async def publish(self, subject: str, payload: bytes = b"", timeout: float | None = None,
                      stream: str | None = None, headers: dict | None = None, msg_id: str | None = None,
                      expected_last_seq: int | None = None, expected_last_subject_seq: int | None = None,
                      expected_last_msg_id: str | None = None) -> PubAck:
        """Publish and wait for the PubAck. A msg_id is always sent (one is made up when
        none is given), so a retry after a lost connection is stored at most once.
        Publishes started together travel in one request (see coalesce.py)."""
        return await self._start_publish(subject, payload, timeout, stream, headers, msg_id, expected_last_seq,
                                         expected_last_subject_seq, expected_last_msg_id)

    async def publish_async(self, subject: str, payload: bytes = b"", **kw) -> asyncio.Future:
        """Start a publish; returns a future of its PubAck (await it, or gather many)."""
        return self._start_publish(subject, payload, **kw)

    async def publish_batch(self, msgs: list[tuple[str, bytes]], timeout: float | None = None) -> list:
        body = {"msgs": [self._pub_body(s, d, None, None, None, {}) for s, d in msgs]}
        r = await self._api("pub.batch", body, timeout, idempotent=True)
        return [JSError.from_wire(a["error"]) if "error" in a else PubAck.from_dict(a) for a in r["acks"]]

    # -- consumers -----------------------------------------------------------------------
    async def add_consumer(self, stream: str, config: ConsumerConfig | None = None, action: str = "",
                           **params) -> ConsumerInfo:
        cfg = (config or ConsumerConfig()).evolve(**params) if params else (config or ConsumerConfig())
        r = await self._api("consumer.add", {"stream": stream, "config": cfg.to_dict(), "action": action},
                            idempotent=True)
        return ConsumerInfo.from_dict(r)

    async def update_consumer(self, stream: str, config: ConsumerConfig | None = None, **params) -> ConsumerInfo:
        return await self.add_consumer(stream, config, action="update", **params)

    async def delete_consumer(self, stream: str, consumer: str) -> bool:
        return (await self._api("consumer.delete", {"stream": stream, "name": consumer}))["success"]

    async def consumer_info(self, stream: str, consumer: str) -> ConsumerInfo:
        return ConsumerInfo.from_dict(await self._api("consumer.info", {"stream": stream, "name": consumer}, idempotent=True))

    async def consumers_info(self, stream: str) -> list[ConsumerInfo]:
        return [ConsumerInfo.from_dict(d) for d in (await self._api("consumer.list", {"stream": stream}, idempotent=True))["consumers"]]

    async def pull_subscribe(self, subject: str, durable: str | None = None, stream: str | None = None,
                             config: ConsumerConfig | None = None) -> PullSubscription:
        stream = stream or await self.find_stream_name_by_subject(subject)
        cfg = (config or ConsumerConfig()).evolve(durable_name=durable or (config.durable_name if config else None))
        if cfg.filter_subject is None and not cfg.filter_subjects and subject:
            cfg.filter_subject = subject
        if durable:
            try:
                await self.consumer_info(stream, durable)
                return PullSubscription(self, stream, durable)
            except ConsumerNotFoundError:
                pass
        info = await self.add_consumer(stream, cfg)
        return PullSubscription(self, stream, info.name)

    async def subscribe(self, subject: str, queue: str | None = None, durable: str | None = None,
                        stream: str | None = None, cb: Callable[[Msg], Awaitable] | None = None,
                        manual_ack: bool = False, config: ConsumerConfig | None = None) -> Subscription:
        """Push subscription: create or bind the consumer, subscribe to its deliver subject.
        With a queue, the consumer's deliver_group is the queue and each message reaches one member."""
        stream = stream or await self.find_stream_name_by_subject(subject)
        name = durable or (queue if queue else None)
        info = None
        if name:
            try:
                info = await self.consumer_info(stream, name)
            except ConsumerNotFoundError:
                info = None
        if info is None:
            cfg = config or ConsumerConfig()
            cfg = cfg.evolve(durable_name=name, deliver_subject=cfg.deliver_subject or self._nc.new_inbox(),
                             deliver_group=queue or cfg.deliver_group,
                             filter_subject=cfg.filter_subject or (subject if not cfg.filter_subjects else None))
            info = await self.add_consumer(stream, cfg)
        user_cb = cb

        def is_status(msg: Msg) -> bool:
            # Idle heartbeats are for the library, not the application (as in nats-py);
            # auto-acking one would fail, since it carries no JetStream metadata.
            return msg.metadata is None and bool((msg.headers or {}).get("Status"))

        async def auto_ack(msg: Msg) -> None:
            if is_status(msg):
                return
            await user_cb(msg)
            if not msg._acked and info.config.ack_policy != "none":
                await msg.ack()

        async def manual(msg: Msg) -> None:
            if not is_status(msg):
                await user_cb(msg)

        run = None if cb is None else (manual if manual_ack else auto_ack)
        return await self._nc.subscribe(info.config.deliver_subject, queue=info.config.deliver_group or "", cb=run)
