"""Typed errors with JetStream's stable numeric codes.

Every error a command can produce is a `JSError`: an HTTP-like `code`, the
JetStream `err_code` and a description. Subclasses exist for the errors
clients commonly catch by type; the rest are built with `js_error(...)`.
"""
from __future__ import annotations


class JSError(Exception):
    code: int = 500
    err_code: int = 10000
    description: str = "error"

    def __init__(self, description: str | None = None, *, code: int | None = None, err_code: int | None = None):
        if description is not None:
            self.description = description
        if code is not None:
            self.code = code
        if err_code is not None:
            self.err_code = err_code
        super().__init__(f"{self.description} (err_code={self.err_code})")

    def to_wire(self) -> dict:
        return {"code": self.code, "err_code": self.err_code, "description": self.description}

    @staticmethod
    def from_wire(d: dict) -> "JSError":
        cls = ERROR_CLASSES.get(d.get("err_code"), JSError)
        return cls(d.get("description"), code=d.get("code"), err_code=d.get("err_code"))

    def __eq__(self, other):
        return isinstance(other, JSError) and self.to_wire() == other.to_wire()

    def __hash__(self):
        return hash((self.code, self.err_code, self.description))


def _err(name: str, code: int, err_code: int, description: str) -> type[JSError]:
    return type(name, (JSError,), {"code": code, "err_code": err_code, "description": description})


BadRequestError = _err("BadRequestError", 400, 10003, "bad request")
InsufficientResourcesError = _err("InsufficientResourcesError", 503, 10023, "insufficient resources")
ConsumerCreateError = _err("ConsumerCreateError", 500, 10012, "consumer create error")
ConsumerNameExistError = _err("ConsumerNameExistError", 400, 10013, "consumer name already in use")
ConsumerNotFoundError = _err("ConsumerNotFoundError", 404, 10014, "consumer not found")
MaximumConsumersLimitError = _err("MaximumConsumersLimitError", 400, 10026, "maximum consumers limit reached")
NoMessageFoundError = _err("NoMessageFoundError", 404, 10037, "no message found")
SequenceNotFoundError = _err("SequenceNotFoundError", 400, 10043, "sequence not found")
StreamInvalidConfigError = _err("StreamInvalidConfigError", 500, 10052, "stream invalid config")
MessageSizeExceedsError = _err("MessageSizeExceedsError", 400, 10054, "message size exceeds maximum allowed")
StreamMsgDeleteFailedError = _err("StreamMsgDeleteFailedError", 500, 10057, "message delete failed")
StreamNameExistError = _err("StreamNameExistError", 400, 10058,
                            "stream name already in use with a different configuration")
StreamNotFoundError = _err("StreamNotFoundError", 404, 10059, "stream not found")
StreamNotMatchError = _err("StreamNotMatchError", 400, 10060, "expected stream does not match")
StreamSubjectOverlapError = _err("StreamSubjectOverlapError", 400, 10065, "subjects overlap with an existing stream")
WrongLastMsgIDError = _err("WrongLastMsgIDError", 400, 10070, "wrong last msg ID")
WrongLastSequenceError = _err("WrongLastSequenceError", 400, 10071, "wrong last sequence")
ReplicasNotSupportedError = _err("ReplicasNotSupportedError", 500, 10074,
                                 "replicas > 1 not supported in non-clustered mode")
StreamStoreFailedError = _err("StreamStoreFailedError", 503, 10077, "stream store failed")
HeaderExceedsMaximumError = _err("HeaderExceedsMaximumError", 400, 10097,
                                 "header size exceeds maximum allowed of 64k")
StreamSealedError = _err("StreamSealedError", 400, 10109, "invalid operation on sealed stream")
StreamPurgeFailedError = _err("StreamPurgeFailedError", 500, 10110, "purge failed")
StreamRollupFailedError = _err("StreamRollupFailedError", 500, 10111, "rollup failed")
ConsumerAlreadyExistsError = _err("ConsumerAlreadyExistsError", 400, 10148, "consumer already exists")
ConsumerDoesNotExistError = _err("ConsumerDoesNotExistError", 400, 10149, "consumer does not exist")
DuplicateMessageInProcessError = _err("DuplicateMessageInProcessError", 409, 10158,
                                      "duplicate message id is in process")
NoStreamForSubjectError = _err("NoStreamForSubjectError", 503, 10161, "no stream matches subject")
InternalError = _err("InternalError", 500, 10999, "internal error while applying command")
# The cluster's: a follower refuses (nothing was proposed, so a retry on the leader
# is always safe); an entry whose commit could not be confirmed (leader lost, timeout)
# may or may not be applied, so only idempotent requests may retry it.
NotLeaderError = _err("NotLeaderError", 500, 10009, "cluster can not handle request (not leader)")
ClusterUnavailableError = _err("ClusterUnavailableError", 503, 10008,
                               "JetStream system temporarily unavailable")


# err_codes whose class clients may catch by type; consumer-config violations
# share ConsumerCreateError-like 400s and are built by `consumer_config_error`.
ERROR_CLASSES: dict[int, type[JSError]] = {
    c.err_code: c for c in [
        BadRequestError, InsufficientResourcesError, ConsumerCreateError, ConsumerNameExistError,
        ConsumerNotFoundError, MaximumConsumersLimitError, NoMessageFoundError, SequenceNotFoundError,
        StreamInvalidConfigError, MessageSizeExceedsError, StreamMsgDeleteFailedError, StreamNameExistError,
        StreamNotFoundError, StreamNotMatchError, StreamSubjectOverlapError, WrongLastMsgIDError,
        WrongLastSequenceError, ReplicasNotSupportedError, StreamStoreFailedError, HeaderExceedsMaximumError,
        StreamSealedError, StreamPurgeFailedError, StreamRollupFailedError, ConsumerAlreadyExistsError,
        ConsumerDoesNotExistError, DuplicateMessageInProcessError, NoStreamForSubjectError, InternalError,
        NotLeaderError, ClusterUnavailableError,
    ]
}


def js_error(err_code: int, description: str, code: int = 400) -> JSError:
    cls = ERROR_CLASSES.get(err_code, JSError)
    return cls(description, code=code, err_code=err_code)


def invalid_stream_config(description: str) -> JSError:
    return StreamInvalidConfigError(description)
