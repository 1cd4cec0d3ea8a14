"""Keys, sealing and keyed hashes. Every primitive comes from a library; none is written here.

- Passphrase -> key-encryption key: Argon2id (or scrypt, for slots that ask for it),
  its parameters and salt stored in the key slot, tuned to about half a second.
- Master key: 32 random bytes. Every working key is derived from it with
  HKDF-SHA256 and a purpose label, so no key is used for two jobs.
- Sealing: AES-256-GCM, a fresh random 96-bit nonce per message, stored in front
  of the ciphertext: nonce(12) || ciphertext || tag(16). Chunks get a key of their
  own (HKDF with the chunk id as salt), which keeps the number of messages per
  key far below the random-nonce bound.
- Blob ids: keyed BLAKE3 of the plaintext, so equal plaintexts share an id
  (dedup) while nobody without the key can test a guess of the content.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE
BLOB_ID_SIZE = 32

# Argon2id memory stays at 64 MiB: more would show in the daemon's peak memory.
ARGON2_MEMORY_KIB = 64 * 1024
ARGON2_LANES = 4
SALT_SIZE = 16


class AuthenticationFailed(Exception):
    """A sealed message did not authenticate: wrong key, or modified bytes."""


# -- sealing ---------------------------------------------------------------------

def seal(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    nonce = os.urandom(NONCE_SIZE)
    return nonce + _aead(key).encrypt(nonce, plaintext, associated_data)


def seal_into(key: bytes, plaintext: bytes, associated_data: bytes, out: memoryview) -> None:
    """seal() into `out`, which must be exactly len(plaintext) + SEAL_OVERHEAD bytes."""
    nonce = os.urandom(NONCE_SIZE)
    out[:NONCE_SIZE] = nonce
    _aead(key).encrypt_into(nonce, plaintext, associated_data, out[NONCE_SIZE:])


def unseal(key: bytes, sealed: bytes | memoryview, associated_data: bytes) -> bytes:
    if len(sealed) < SEAL_OVERHEAD:
        raise AuthenticationFailed("sealed message is too short")
    view = memoryview(sealed)   # slicing a view copies nothing
    try:
        return _aead(key).decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], associated_data)
    except InvalidTag:
        raise AuthenticationFailed("authentication failed") from None


@lru_cache(maxsize=256)
def _aead(key: bytes) -> AESGCM:
    return AESGCM(key)


# -- passphrases -------------------------------------------------------------------

@dataclass(frozen=True)
class KdfParams:
    """How a key slot turns a passphrase into its key-encryption key."""

    algorithm: str              # "argon2id" or "scrypt"
    salt: bytes
    memory_kib: int = 0         # argon2id
    iterations: int = 0         # argon2id
    lanes: int = 0              # argon2id
    n: int = 0                  # scrypt
    r: int = 0                  # scrypt
    p: int = 0                  # scrypt

    def to_dict(self) -> dict:
        if self.algorithm == "argon2id":
            return {"algorithm": "argon2id", "salt": self.salt, "memory_kib": self.memory_kib,
                    "iterations": self.iterations, "lanes": self.lanes}
        return {"algorithm": "scrypt", "salt": self.salt, "n": self.n, "r": self.r, "p": self.p}

    @classmethod
    def from_dict(cls, data: dict) -> "KdfParams":
        algorithm = data["algorithm"]
        if algorithm not in ("argon2id", "scrypt"):
            raise ValueError(f"unknown key derivation {algorithm!r}")
        fields = {k: data[k] for k in data if k in cls.__dataclass_fields__}
        params = cls(**fields)
        if not isinstance(params.salt, bytes) or len(params.salt) < SALT_SIZE:
            raise ValueError("key derivation salt is missing or too short")
        return params


def derive_key_encryption_key(passphrase: bytes, params: KdfParams) -> bytes:
    if params.algorithm == "argon2id":
        return _argon2id(passphrase, params)
    return Scrypt(salt=params.salt, length=KEY_SIZE, n=params.n, r=params.r, p=params.p).derive(passphrase)


def _argon2id(passphrase: bytes, params: KdfParams) -> bytes:
    """Argon2id (RFC 9106, version 0x13). argon2-cffi computes the lanes on as
    many threads and without the GIL: the same parameters and the same key as
    cryptography's (which holds the GIL and uses one core), in about half the
    time on two cores, and the process can do other work meanwhile."""
    try:
        from argon2.low_level import Type, hash_secret_raw
    except ImportError:
        return Argon2id(salt=params.salt, length=KEY_SIZE, iterations=params.iterations,
                        lanes=params.lanes, memory_cost=params.memory_kib).derive(passphrase)
    return hash_secret_raw(passphrase, params.salt, time_cost=params.iterations, memory_cost=params.memory_kib,
                           parallelism=params.lanes, hash_len=KEY_SIZE, type=Type.ID, version=0x13)


def tune_kdf(target_seconds: float = 0.5) -> KdfParams:
    """Argon2id parameters that take about `target_seconds` on this machine.

    Memory is fixed (64 MiB) and iterations grow to reach the target; a target
    below what one iteration at 64 MiB takes lowers the memory instead (only
    useful for tests and very slow devices).
    """
    memory = ARGON2_MEMORY_KIB
    elapsed = _time_argon2(memory, 1)
    if elapsed > target_seconds:
        memory = max(8 * ARGON2_LANES, int(memory * target_seconds / elapsed))
        iterations = 1
    else:
        iterations = max(1, round(target_seconds / elapsed))
    return KdfParams("argon2id", os.urandom(SALT_SIZE), memory_kib=memory,
                     iterations=iterations, lanes=ARGON2_LANES)


def _time_argon2(memory_kib: int, iterations: int) -> float:
    """On one core, as before argon2-cffi unlocked on several: the parameters
    (the cost to an attacker) stay what they were, unlocking got faster."""
    start = time.perf_counter()
    Argon2id(salt=b"\0" * SALT_SIZE, length=KEY_SIZE, iterations=iterations,
             lanes=ARGON2_LANES, memory_cost=memory_kib).derive(b"timing")
    return time.perf_counter() - start


# -- the master key and what derives from it --------------------------------------

class MasterKey:
    """The repository's one secret; every working key is derived from it."""

    def __init__(self, secret: bytes):
        if len(secret) != KEY_SIZE:
            raise ValueError("a master key is 32 bytes")
        self.secret = secret
        self.blob_id_key = self.derive("blob-id")
        self.config_key = self.derive("config")
        self.index_key = self.derive("index")
        self.snapshot_key = self.derive("snapshot")
        self.policy_key = self.derive("policy")
        self.pin_key = self.derive("pin")
        self.prune_key = self.derive("prune")
        self.target_key = self.derive("target")

    @classmethod
    def generate(cls) -> "MasterKey":
        return cls(os.urandom(KEY_SIZE))

    def derive(self, purpose: str, salt: bytes | None = None) -> bytes:
        return HKDF(
            algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt,
            info=b"cloudfs/v1/" + purpose.encode(),
        ).derive(self.secret)

    def chunk_key(self, chunk_id: bytes) -> bytes:
        return _chunk_key(self.secret, chunk_id)

    def blob_id(self, plaintext: bytes | memoryview) -> bytes:
        return blake3.blake3(plaintext, key=self.blob_id_key).digest()


@lru_cache(maxsize=1024)
def _chunk_key(secret: bytes, chunk_id: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=chunk_id,
                info=b"cloudfs/v1/chunk").derive(secret)
