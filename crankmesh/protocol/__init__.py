"""The pure protocol core: canonical encoding, CIDs, did:key identities, signed
envelopes, typed messages, subject names and the exception tree.  No I/O here."""

from __future__ import annotations

from .cid import cid_for_blob, cid_for_document, parse_cid, verify_blob
from .encoding import canonical_decode, canonical_encode
from .envelope import (
    PROTOCOL_VERSION,
    Envelope,
    ReplayGuard,
    check_fresh,
    open_envelope,
    sign_envelope,
)
from .identity import Identity, did_from_public_key, open_sealed, public_key_from_did, seal
from .messages import (
    Accept,
    Advert,
    AdvertCapability,
    Announce,
    Assignment,
    Bid,
    BidSlo,
    Close,
    Constraints,
    JobSlo,
    JobSpec,
    Load,
    Metering,
    Receipt,
    ReceiptDelivery,
    Reject,
    Settlement,
    SignedMessage,
    decode_message,
    job_cid_of,
)

__all__ = [
    "PROTOCOL_VERSION",
    "Accept",
    "Advert",
    "AdvertCapability",
    "Announce",
    "Assignment",
    "Bid",
    "BidSlo",
    "Close",
    "Constraints",
    "Envelope",
    "Identity",
    "JobSlo",
    "JobSpec",
    "Load",
    "Metering",
    "Receipt",
    "ReceiptDelivery",
    "Reject",
    "ReplayGuard",
    "Settlement",
    "SignedMessage",
    "canonical_decode",
    "canonical_encode",
    "check_fresh",
    "cid_for_blob",
    "cid_for_document",
    "decode_message",
    "did_from_public_key",
    "job_cid_of",
    "open_envelope",
    "open_sealed",
    "parse_cid",
    "public_key_from_did",
    "seal",
    "sign_envelope",
    "verify_blob",
]
