import os
import time

import pytest

from cloudfs import crypto


def test_sealed_message_opens_with_the_same_key_and_associated_data():
    key = os.urandom(32)
    sealed = crypto.seal(key, b"secret text", b"blob-id")
    assert crypto.unseal(key, sealed, b"blob-id") == b"secret text"
    assert b"secret text" not in sealed


def test_sealing_twice_gives_different_bytes_because_nonces_are_fresh():
    key = os.urandom(32)
    assert crypto.seal(key, b"same", b"") != crypto.seal(key, b"same", b"")


@pytest.mark.parametrize("position", [0, 5, 11, 12, 20, -1])
def test_any_flipped_byte_fails_authentication(position):
    key = os.urandom(32)
    sealed = bytearray(crypto.seal(key, b"x" * 10, b"ad"))
    sealed[position] ^= 0x01
    with pytest.raises(crypto.AuthenticationFailed):
        crypto.unseal(key, bytes(sealed), b"ad")


def test_wrong_associated_data_or_key_fails_authentication():
    key = os.urandom(32)
    sealed = crypto.seal(key, b"payload", b"blob-1")
    with pytest.raises(crypto.AuthenticationFailed):
        crypto.unseal(key, sealed, b"blob-2")
    with pytest.raises(crypto.AuthenticationFailed):
        crypto.unseal(os.urandom(32), sealed, b"blob-1")
    with pytest.raises(crypto.AuthenticationFailed):
        crypto.unseal(key, sealed[:20], b"blob-1")


def test_blob_ids_are_keyed_so_equal_content_matches_only_within_a_repository():
    first, second = crypto.MasterKey.generate(), crypto.MasterKey.generate()
    assert first.blob_id(b"same content") == first.blob_id(b"same content")
    assert first.blob_id(b"same content") != second.blob_id(b"same content")
    assert first.blob_id(b"a") != first.blob_id(b"b")
    assert len(first.blob_id(b"")) == crypto.BLOB_ID_SIZE


def test_derived_keys_differ_by_purpose_and_by_chunk():
    master = crypto.MasterKey.generate()
    keys = {master.config_key, master.index_key, master.snapshot_key, master.blob_id_key,
            master.chunk_key(b"\x01" * 32), master.chunk_key(b"\x02" * 32), master.secret}
    assert len(keys) == 7
    assert master.chunk_key(b"\x01" * 32) == crypto.MasterKey(master.secret).chunk_key(b"\x01" * 32)


def test_kdf_tuning_reaches_roughly_the_target_time():
    params = crypto.tune_kdf(0.05)
    start = time.perf_counter()
    crypto.derive_key_encryption_key(b"passphrase", params)
    elapsed = time.perf_counter() - start
    assert params.algorithm == "argon2id"
    assert 0.005 < elapsed < 0.5


def test_argon2id_on_several_threads_gives_the_key_of_the_single_threaded_one():
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    params = crypto.KdfParams("argon2id", b"s" * crypto.SALT_SIZE, memory_kib=1024, iterations=3, lanes=4)
    single = Argon2id(salt=params.salt, length=crypto.KEY_SIZE, iterations=3, lanes=4,
                      memory_cost=1024).derive(b"passphrase")
    assert crypto.derive_key_encryption_key(b"passphrase", params) == single


def test_kdf_params_round_trip_and_reject_unknown_algorithms():
    params = crypto.tune_kdf(0.01)
    again = crypto.KdfParams.from_dict(params.to_dict())
    assert again == params
    assert crypto.derive_key_encryption_key(b"pw", again) == crypto.derive_key_encryption_key(b"pw", params)
    with pytest.raises(ValueError):
        crypto.KdfParams.from_dict({**params.to_dict(), "algorithm": "md5"})


def test_scrypt_slots_are_still_readable():
    params = crypto.KdfParams("scrypt", os.urandom(16), n=2**10, r=8, p=1)
    again = crypto.KdfParams.from_dict(params.to_dict())
    assert crypto.derive_key_encryption_key(b"pw", again) == crypto.derive_key_encryption_key(b"pw", params)
    assert crypto.derive_key_encryption_key(b"pw", params) != crypto.derive_key_encryption_key(b"pw2", params)
