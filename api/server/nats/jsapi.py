"""The JetStream JSON API (`$JS.API.>`): one handler per subject, each a call on the shared
`JetStreamService` and a JSON answer shaped as nats-server's. Pull requests
(`CONSUMER.MSG.NEXT`) answer with messages, not JSON: see `pull.py`."""
from __future__ import annotations

import base64
import json
import logging
import secrets
import string
from typing import Optional

from jetstream import subjects as subj
from jetstream.errors import BadRequestError, InternalError, JSError, NoMessageFoundError, js_error
from storage import AddConsumer, AddStream, DeleteConsumer, DeleteMsg, DeleteStream, PurgeStream, UpdateStream

from .codec import encode_headers
from .jsjson import (
    consumer_config_in, consumer_info_out, rfc3339, stream_config_in, stream_info_out,
)

log = logging.getLogger("raftbroker.nats")

API_PREFIX = "$JS.API."
LIST_LIMIT = 256
NAMES_LIMIT = 1024
SUBJECTS_LIMIT = 100_000          # subject counts in one stream info answer (nats-server's page)
_NAME_CHARS = string.ascii_letters + string.digits


def _body(data: bytes) -> dict:
    if not data or not data.strip():
        return {}
    try:
        d = json.loads(data)
    except ValueError:
        raise BadRequestError("invalid JSON") from None
    if not isinstance(d, dict):
        raise BadRequestError("request body must be a JSON object")
    return d


def _page(items: list, body: dict, limit: int) -> tuple[list, dict]:
    offset = body.get("offset") or 0
    if not isinstance(offset, int) or offset < 0:
        offset = 0
    return items[offset:offset + limit], {"total": len(items), "offset": offset, "limit": limit}


def error_reply(e: JSError) -> dict:
    return {"error": e.to_wire()}


class JetStreamApi:
    def __init__(self, service, on_streams_changed):
        self.service = service
        self._streams_changed = on_streams_changed
        self._routes = {
            "INFO": self.account_info,
            "STREAM.CREATE": self.stream_create, "STREAM.UPDATE": self.stream_update,
            "STREAM.DELETE": self.stream_delete, "STREAM.INFO": self.stream_info,
            "STREAM.NAMES": self.stream_names, "STREAM.LIST": self.stream_list,
            "STREAM.PURGE": self.stream_purge, "STREAM.MSG.GET": self.msg_get,
            "STREAM.MSG.DELETE": self.msg_delete,
            "CONSUMER.CREATE": self.consumer_create, "CONSUMER.DURABLE.CREATE": self.consumer_durable_create,
            "CONSUMER.DELETE": self.consumer_delete, "CONSUMER.INFO": self.consumer_info,
            "CONSUMER.NAMES": self.consumer_names, "CONSUMER.LIST": self.consumer_list,
        }

    def route(self, subject: str):
        """(handler, arguments) for an API subject, longest verb first; None if unknown."""
        rest = subject[len(API_PREFIX):].split(".")
        for n in (3, 2, 1):
            verb = ".".join(rest[:n])
            if verb in self._routes:
                return self._routes[verb], rest[n:]
        return None

    async def handle(self, subject: str, data: bytes) -> dict:
        found = self.route(subject)
        try:
            if found is None:
                raise BadRequestError(f"unknown JetStream API {subject[len(API_PREFIX):]!r}")
            handler, args = found
            return await handler(args, _body(data))
        except JSError as e:
            return error_reply(e)
        except (TypeError, ValueError, KeyError) as e:
            return error_reply(BadRequestError(f"bad request: {e}"))
        except Exception as e:  # noqa: BLE001 - a bug must cost one request an error, not its reply
            log.exception("JetStream API %s failed", subject)
            return error_reply(InternalError(f"internal error: {e}"))

    @staticmethod
    def _one(args: list, what: str = "stream") -> str:
        if len(args) != 1 or not args[0]:
            raise BadRequestError(f"{what} name is required in the subject")
        return args[0]

    # == account ===========================================================================
    async def account_info(self, args, body):
        def totals(s):
            names = s.stream_names()
            infos = [s.stream_info(n) for n in names]
            return (sum(i.state.bytes for i in infos if i.config.storage == "memory"),
                    sum(i.state.bytes for i in infos if i.config.storage != "memory"),
                    len(names), sum(i.state.consumer_count for i in infos))
        memory, storage, streams, consumers = await self.service.read_fresh(totals)
        return {"type": "io.nats.jetstream.api.v1.account_info_response", "memory": memory, "storage": storage,
                "reserved_memory": 0, "reserved_storage": 0, "streams": streams, "consumers": consumers,
                "limits": {"max_memory": -1, "max_storage": -1, "max_streams": -1, "max_consumers": -1,
                           "max_ack_pending": -1, "memory_max_stream_bytes": -1, "storage_max_stream_bytes": -1,
                           "max_bytes_required": False},
                "api": {"level": 1, "total": 0, "errors": 0}}

    # == streams ===========================================================================
    def _stream_reply(self, info, kind: str, **extra) -> dict:
        out = {"type": f"io.nats.jetstream.api.v1.{kind}",
               **stream_info_out(info, self.service.cluster_view(info.config.num_replicas))}
        out.update(extra)
        return out

    async def stream_create(self, args, body):
        name = self._one(args)
        if body.get("name") not in (None, name):
            raise js_error(10056, "stream name in subject does not match request")
        body["name"] = name
        info = await self.service.propose(AddStream(stream_config_in(body)))
        await self._streams_changed()
        return self._stream_reply(info, "stream_create_response", did_create=True)

    async def stream_update(self, args, body):
        name = self._one(args)
        if body.get("name") not in (None, name):
            raise js_error(10056, "stream name in subject does not match request")
        body["name"] = name
        info = await self.service.propose(UpdateStream(stream_config_in(body)))
        await self._streams_changed()
        return self._stream_reply(info, "stream_update_response")

    async def stream_delete(self, args, body):
        ok = await self.service.propose(DeleteStream(self._one(args)))
        await self._streams_changed()
        return {"type": "io.nats.jetstream.api.v1.stream_delete_response", "success": bool(ok)}

    async def stream_info(self, args, body):
        name = self._one(args)
        pattern = body.get("subjects_filter") or None
        if pattern is not None and not subj.is_valid_subject(pattern):
            raise BadRequestError(f"invalid subjects_filter {pattern!r}")

        def read(s):
            counts = [(k, n) for k, n in s.stream_subjects(name).items() if subj.matches(pattern, k)] \
                if pattern else []
            return s.stream_info(name), counts
        info, counts = await self.service.read_fresh(read)
        out = self._stream_reply(info, "stream_info_response")
        if counts:
            page, meta = _page(sorted(counts), body, SUBJECTS_LIMIT)
            out["state"]["subjects"] = dict(page)
            out.update(meta)
        return out

    async def stream_names(self, args, body):
        subject = body.get("subject") or None     # "" lists every stream, as nats-server does
        names = await self.service.read_fresh(lambda s: s.stream_names(subject))
        page, meta = _page(names, body, NAMES_LIMIT)
        return {"type": "io.nats.jetstream.api.v1.stream_names_response", **meta, "streams": page}

    async def stream_list(self, args, body):
        subject = body.get("subject") or None     # "" lists every stream, as nats-server does
        infos = await self.service.read_fresh(lambda s: [s.stream_info(n) for n in s.stream_names(subject)])
        page, meta = _page(infos, body, LIST_LIMIT)
        return {"type": "io.nats.jetstream.api.v1.stream_list_response", **meta,
                "streams": [stream_info_out(i, self.service.cluster_view(i.config.num_replicas)) for i in page],
                "missing": []}

    async def stream_purge(self, args, body):
        r = await self.service.propose(PurgeStream(self._one(args), body.get("filter"), body.get("seq"),
                                                   body.get("keep")))
        self.service.wake()
        return {"type": "io.nats.jetstream.api.v1.stream_purge_response", "success": r.success,
                "purged": r.purged}

    async def msg_get(self, args, body):
        name = self._one(args)
        seq, last, nxt = body.get("seq"), body.get("last_by_subj"), body.get("next_by_subj")
        m = await self.service.read_fresh(lambda s: s.get_msg(name, seq, last, nxt))
        return {"type": "io.nats.jetstream.api.v1.stream_msg_get_response", "message": stored_msg_out(m)}

    async def direct_get(self, stream: str, last_by_subject: str, payload: bytes) -> tuple[dict, bytes]:
        """A DIRECT.GET answer: the message itself with its coordinates as headers, or a
        status (404 not found, 408 bad request) as nats-server sends."""
        try:
            body = {"last_by_subj": last_by_subject} if last_by_subject else _body(payload)
            if not body:
                return {"Status": "408", "Description": "Empty Request"}, b""
            seq, last, nxt = body.get("seq"), body.get("last_by_subj"), body.get("next_by_subj")
            m = await self.service.read_fresh(lambda s: s.get_msg(stream, seq, last, nxt))
        except NoMessageFoundError:
            return {"Status": "404", "Description": "Message Not Found"}, b""
        except JSError as e:
            return {"Status": "408" if e.code == 400 else str(e.code), "Description": e.description}, b""
        headers = dict(m.headers or {})
        headers.update({"Nats-Stream": m.stream, "Nats-Subject": m.subject, "Nats-Sequence": str(m.seq),
                        "Nats-Time-Stamp": rfc3339(m.time)})
        return headers, m.data

    async def msg_delete(self, args, body):
        ok = await self.service.propose(DeleteMsg(self._one(args), int(body.get("seq") or 0),
                                                  not body.get("no_erase") is False))
        return {"type": "io.nats.jetstream.api.v1.stream_msg_delete_response", "success": bool(ok)}

    # == consumers =========================================================================
    async def _create_consumer(self, stream: str, name: Optional[str], filter_subject: Optional[str],
                               body: dict, durable: bool) -> dict:
        if body.get("stream_name") not in (None, stream):
            raise BadRequestError("stream name in subject does not match request")
        cfg = consumer_config_in(body.get("config") or {})
        if durable:
            if cfg.durable_name not in (None, name):
                raise js_error(10017, "consumer name in subject does not match durable name in request")
            cfg = cfg.evolve(durable_name=name)
        elif name is not None:
            if cfg.name not in (None, name) or cfg.durable_name not in (None, name):
                raise js_error(10017, "consumer name in subject does not match durable name in request")
            cfg = cfg.evolve(name=name)
            if filter_subject is not None and cfg.filters != [filter_subject]:
                raise js_error(10131, "consumer create request did not match filtered subject from create subject")
        else:
            if not cfg.name and not cfg.durable_name:
                cfg = cfg.evolve(name="".join(secrets.choice(_NAME_CHARS) for _ in range(8)))
        info = await self.service.propose(AddConsumer(stream, cfg, body.get("action") or ""))
        await self.service.consumer_changed(stream, info)
        replicas = await self.service.read(lambda s: s.stream_info(stream).config.num_replicas)
        return {"type": "io.nats.jetstream.api.v1.consumer_create_response",
                **consumer_info_out(self.service.with_waiting(info), self.service.cluster_view(replicas))}

    async def consumer_create(self, args, body):
        if not args or not args[0]:
            raise BadRequestError("stream name is required in the subject")
        stream = args[0]
        name = args[1] if len(args) > 1 else None
        filter_subject = ".".join(args[2:]) if len(args) > 2 else None
        return await self._create_consumer(stream, name, filter_subject, body, durable=False)

    async def consumer_durable_create(self, args, body):
        if len(args) != 2:
            raise BadRequestError("stream and durable name are required in the subject")
        return await self._create_consumer(args[0], args[1], None, body, durable=True)

    @staticmethod
    def _two(args) -> tuple[str, str]:
        if len(args) != 2 or not all(args):
            raise BadRequestError("stream and consumer name are required in the subject")
        return args[0], args[1]

    async def consumer_delete(self, args, body):
        stream, name = self._two(args)
        ok = await self.service.propose(DeleteConsumer(stream, name))
        return {"type": "io.nats.jetstream.api.v1.consumer_delete_response", "success": bool(ok)}

    async def consumer_info(self, args, body):
        stream, name = self._two(args)
        info, replicas = await self.service.read_fresh(
            lambda s: (s.consumer_info(stream, name), s.stream_info(stream).config.num_replicas))
        return {"type": "io.nats.jetstream.api.v1.consumer_info_response",
                **consumer_info_out(self.service.with_waiting(info), self.service.cluster_view(replicas))}

    async def consumer_names(self, args, body):
        stream = self._one(args)
        names = await self.service.read_fresh(lambda s: s.consumer_names(stream))
        page, meta = _page(names, body, NAMES_LIMIT)
        return {"type": "io.nats.jetstream.api.v1.consumer_names_response", **meta, "consumers": page}

    async def consumer_list(self, args, body):
        stream = self._one(args)
        infos, replicas = await self.service.read_fresh(lambda s: (
            [s.consumer_info(stream, n) for n in s.consumer_names(stream)], s.stream_info(stream).config.num_replicas))
        page, meta = _page(infos, body, LIST_LIMIT)
        cluster = self.service.cluster_view(replicas)
        return {"type": "io.nats.jetstream.api.v1.consumer_list_response", **meta,
                "consumers": [consumer_info_out(self.service.with_waiting(i), cluster) for i in page],
                "missing": []}


def stored_msg_out(m) -> dict:
    out = {"subject": m.subject, "seq": m.seq, "time": rfc3339(m.time)}
    if m.data:
        out["data"] = base64.b64encode(m.data).decode()
    if m.headers:
        out["hdrs"] = base64.b64encode(encode_headers(m.headers)).decode()
    return out
