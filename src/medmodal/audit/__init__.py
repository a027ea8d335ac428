"""Leakage audit: duplicated images, signals, audio and notes across patients and splits.

:func:`audit_manifest` reads every file-backed and text modality of a manifest once and
groups rows that share content at three levels: byte-identical files (sha256; an
``.npz`` member by its decoded array), identical decoded content (pixels, samples,
whitespace- and case-normalised notes) and near-identical images (256-bit DCT pHash
within :data:`NEAR_THRESHOLD` bits). Each group says whether it spans patients (one
person under two ids, or a data error) and splits (leakage). Unreadable files are
listed, never raised. ``medmodal audit MANIFEST --schema SCHEMA`` is the command line.
:func:`image_key` is the byte-level key of one image alone (what a pretraining checkpoint records
of the images it trained on).
"""

from medmodal.audit.collect import Unreadable, image_key
from medmodal.audit.core import audit_manifest
from medmodal.audit.hashing import NEAR_THRESHOLD, PHASH_BITS, normalize_note, phash
from medmodal.audit.report import AuditReport, DuplicateGroup, Member

__all__ = [
    "NEAR_THRESHOLD",
    "PHASH_BITS",
    "AuditReport",
    "DuplicateGroup",
    "Member",
    "Unreadable",
    "audit_manifest",
    "image_key",
    "normalize_note",
    "phash",
]
