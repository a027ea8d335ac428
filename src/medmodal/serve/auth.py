"""Bearer tokens: a JSON file of token names and SHA-256 hashes, never the tokens themselves.

``create_token(file, name)`` adds a random token (shown once); :class:`TokenStore` answers which
name a presented token belongs to, comparing hashes in constant time against every entry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from medmodal.errors import ConfigError

PREFIX = "mm_"


def token_hash(token: str) -> str:
    """SHA-256 of a token (tokens are 256-bit random, so a plain hash cannot be guessed back)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def read_tokens(path: str | Path) -> list[dict[str, str]]:
    """The entries of a token file (``{"tokens": [{name, sha256, created}, ...]}``)."""
    p = Path(path)
    if not p.is_file():
        return []
    try:
        body = json.loads(p.read_text(encoding="utf-8"))
        entries = list(body["tokens"])
        for e in entries:
            if not (isinstance(e["name"], str) and len(e["sha256"]) == 64):
                raise ValueError("bad entry")
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"token file {p} is not a medmodal token file: {exc}") from None
    return entries


def create_token(path: str | Path, name: str) -> str:
    """Add a token called ``name`` to the file (created 0600) and return it; only its hash is
    stored. A name that exists already is a ConfigError."""
    name = name.strip()
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"token name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
    entries = read_tokens(path)
    if any(e["name"] == name for e in entries):
        raise ConfigError(f"a token named {name!r} exists already in {path}")
    token = PREFIX + secrets.token_urlsafe(32)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    entries.append({"name": name, "sha256": token_hash(token), "created": created})
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"tokens": entries}, fh, indent=1)
    tmp.replace(p)
    return token


@dataclass(frozen=True)
class TokenStore:
    """Token hashes by name; :meth:`name_of` is the one check every request goes through."""

    hashes: tuple[tuple[str, bytes], ...]

    @classmethod
    def load(cls, path: str | Path) -> TokenStore:
        entries = read_tokens(path)
        if not entries:
            raise ConfigError(f"no tokens in {path}; add one with `medmodal token create NAME`")
        return cls(tuple((e["name"], bytes.fromhex(e["sha256"])) for e in entries))

    def name_of(self, token: str | None) -> str | None:
        """The name of ``token``, or None; every entry is compared (constant time each)."""
        if not token:
            return None
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        found = None
        for name, stored in self.hashes:
            if hmac.compare_digest(digest, stored):
                found = name
        return found


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
