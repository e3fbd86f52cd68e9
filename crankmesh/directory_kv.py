"""The directory's JetStream key-value bucket (RFC 0001 §8.15).

One bucket per federation, ``crank_<fed>_directory`` (history 1): key = a node id,
value = that node's latest signed Advert (with its Quotes).  Nodes *put* their advert
on change and every TTL/3; originators *watch* the bucket (current values first, then
updates), so a late joiner has the directory at once and an executor-only node hears
no other node's adverts.

Error handling: :func:`open_bucket` returns ``None`` when the server has no JetStream
(or refuses the bucket): the caller falls back to the adverts subject (§8.10) and logs
that once.  It never raises a ``nats`` exception.
"""

from __future__ import annotations

import logging
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import api

from .protocol import subjects

__all__ = ["DEFAULT_BUCKET_TTL_S", "open_bucket"]

log = logging.getLogger("crankmesh.directory")

#: The bucket's TTL (max age), whoever creates it: only the horizon after which the
#: server removes a dead node's entry.  Liveness is each advert's own ``exp``; the TTL
#: must exceed every node's refresh period (at most a third of the longest quote
#: validity, 120 s), so that a live node's entry never ages out between two puts.
DEFAULT_BUCKET_TTL_S = 60.0
#: Largest value the bucket takes (the Advert limit, RFC 0001 §11).
MAX_VALUE_BYTES = 64 * 1024


async def open_bucket(
    nc: Any,
    federation: str,
    *,
    ttl_s: float = DEFAULT_BUCKET_TTL_S,
    replicas: int = 1,
    timeout_s: float = 2.0,
) -> Any:
    """Bind the federation's directory bucket, creating it when it does not exist yet
    (history 1, TTL ``ttl_s``); ``None`` when JetStream cannot serve it.

    An existing bucket is used as it is (its creator chose the TTL and replicas)."""
    bucket = subjects.directory_bucket(federation)
    try:
        js = nc.jetstream(timeout=timeout_s)
        try:
            return await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            pass
        try:
            kv = await js.create_key_value(
                api.KeyValueConfig(
                    bucket=bucket,
                    history=1,
                    ttl=max(ttl_s, 1.0),
                    replicas=replicas,
                    max_value_size=MAX_VALUE_BYTES,
                    storage=api.StorageType.MEMORY,
                )
            )
            log.info("created the directory bucket %s (TTL %.0f s)", bucket, ttl_s)
            return kv
        except nats.js.errors.BadRequestError:  # created meanwhile by another party
            return await js.key_value(bucket)
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        log.warning(
            "the directory bucket %s is not available (%r): falling back to the adverts "
            "subject (RFC 0001 §8.15); the directory then costs every node N adverts per "
            "interval",
            bucket,
            exc,
        )
        return None
