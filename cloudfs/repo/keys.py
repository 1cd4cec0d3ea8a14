"""Key slots: `keys/<id>`, one per passphrase, each wrapping the same master key.

A slot is the 8-byte header followed by a msgpack map: the key-derivation
parameters and salt, when/where/by whom it was made, a label, and `wrapped`,
the master key sealed with the key the passphrase derives. The sealed part also
names the repository, so a slot copied from another repository is recognised.
The associated data of the seal is the header plus every other field of the
map, so no field can be altered without the slot failing to open; and the
slot's name is the SHA-256 of its bytes, so accidental damage is told apart
from a wrong passphrase.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone

from cloudfs import crypto
from cloudfs.errors import IntegrityError
from cloudfs.repo.format import HEADER_SIZE, Kind, make_header, pack, parse_header, unpack

KEYS_PREFIX = "keys/"


@dataclass(frozen=True)
class KeySlot:
    name: str           # "keys/<sha256 of the slot's bytes, hex>"
    raw: bytes          # the slot as stored
    public: dict        # every field but "wrapped", in stored order
    kdf: crypto.KdfParams
    wrapped: bytes

    @property
    def slot_id(self) -> str:
        return self.name[len(KEYS_PREFIX):]

    @property
    def created(self) -> str:
        return str(self.public.get("created", ""))

    @property
    def host(self) -> str:
        return str(self.public.get("host", ""))

    @property
    def user(self) -> str:
        return str(self.public.get("user", ""))

    @property
    def label(self) -> str:
        return str(self.public.get("label", ""))

    @classmethod
    def create(cls, master: crypto.MasterKey, repo_id: bytes, passphrase: bytes,
               kdf: crypto.KdfParams, label: str = "") -> "KeySlot":
        public = {"kdf": kdf.to_dict(), "created": datetime.now(timezone.utc).isoformat(),
                  "host": socket.gethostname(), "user": user_name(), "label": label}
        kek = crypto.derive_key_encryption_key(passphrase, kdf)
        secret = pack({"master": master.secret, "repo_id": repo_id})
        wrapped = crypto.seal(kek, secret, _associated_data(public))
        raw = make_header(Kind.KEY) + pack({**public, "wrapped": wrapped})
        return cls.from_bytes(KEYS_PREFIX + hashlib.sha256(raw).hexdigest(), raw)

    @classmethod
    def from_bytes(cls, name: str, raw: bytes) -> "KeySlot":
        parse_header(raw, name, Kind.KEY)
        if hashlib.sha256(raw).hexdigest() != name[len(KEYS_PREFIX):]:
            raise IntegrityError(name, "damaged key slot (its content does not match its name)")
        try:
            body = unpack(raw[HEADER_SIZE:])
            wrapped = bytes(body.pop("wrapped"))
            return cls(name, raw, body, crypto.KdfParams.from_dict(body["kdf"]), wrapped)
        except Exception as error:
            raise IntegrityError(name, f"damaged key slot ({error})") from None

    def unlock(self, passphrase: bytes) -> tuple[crypto.MasterKey, bytes] | None:
        """The master key and repository id, or None if the passphrase is not this slot's."""
        kek = crypto.derive_key_encryption_key(passphrase, self.kdf)
        try:
            secret = unpack(crypto.unseal(kek, self.wrapped, _associated_data(self.public)))
        except crypto.AuthenticationFailed:
            return None
        return crypto.MasterKey(bytes(secret["master"])), bytes(secret["repo_id"])


def _associated_data(public: dict) -> bytes:
    return make_header(Kind.KEY) + pack(public)


def user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())
