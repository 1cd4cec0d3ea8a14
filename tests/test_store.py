import os
import time

import pytest
import trio

from cloudfs.errors import (
    AccessDenied,
    BucketNotFound,
    ObjectExists,
    ObjectNotFound,
    StoreError,
    StoreUnavailable,
)
from cloudfs.store import LocalStore, RetryPolicy, S3Options, S3Store, open_store
from tests.faults import FaultyProxy

FAST_RETRIES = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


def s3_store(server, bucket, prefix="repo", **options) -> S3Store:
    options.setdefault("retry", FAST_RETRIES)
    return S3Store(bucket, prefix, S3Options(endpoint_url=server.endpoint, **options))


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, s3_env):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return s3_store(s3_env, s3_env.new_bucket())


def run(fn, *args):
    return trio.run(fn, *args)


def test_objects_round_trip_with_ranges_listing_and_delete(store):
    async def scenario():
        payload = os.urandom(300_000)
        await store.put("chunks/ab/abcdef", payload)
        await store.put("chunks/cd/cdef01", b"small")
        await store.put("index/1234", b"")
        assert await store.get("chunks/ab/abcdef") == payload
        assert await store.get("chunks/ab/abcdef", 1000, 4096) == payload[1000:5096]
        assert await store.get("chunks/ab/abcdef", 299_990) == payload[299_990:]
        assert await store.get("chunks/ab/abcdef", 5, 0) == b""
        assert await store.get("index/1234") == b""
        assert (await store.head("chunks/ab/abcdef")).size == 300_000
        listed = [(i.name, i.size) for i in await store.list("chunks/")]
        assert listed == [("chunks/ab/abcdef", 300_000), ("chunks/cd/cdef01", 5)]
        assert [i.name for i in await store.list()] == ["chunks/ab/abcdef", "chunks/cd/cdef01", "index/1234"]
        await store.delete("chunks/cd/cdef01")
        await store.delete("chunks/cd/cdef01")   # deleting a missing object is fine
        assert not await store.exists("chunks/cd/cdef01")
        assert await store.exists("index/1234")

    run(scenario)


def test_missing_objects_raise_object_not_found(store):
    async def scenario():
        with pytest.raises(ObjectNotFound):
            await store.get("nothing/here")
        with pytest.raises(ObjectNotFound):
            await store.get("nothing/here", 10, 10)
        with pytest.raises(ObjectNotFound):
            await store.head("nothing/here")
        assert await store.list("nothing/") == []

    run(scenario)


def test_exclusive_put_never_overwrites(store):
    async def scenario():
        await store.put("config", b"first", exclusive=True)
        with pytest.raises(ObjectExists):
            await store.put("config", b"second", exclusive=True)
        assert await store.get("config") == b"first"

    run(scenario)


def test_many_concurrent_requests_complete(store):
    async def scenario():
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(store.put, f"many/{i:03d}", bytes([i]) * 1000)
        assert len(await store.list("many/")) == 40
        assert await store.get("many/017") == bytes([17]) * 1000

    run(scenario)


def test_local_store_rejects_names_that_escape_its_directory(tmp_path):
    store = LocalStore(tmp_path / "store")
    for name in ("../outside", "/etc/passwd", "a//b", ""):
        with pytest.raises(StoreError):
            run(store.put, name, b"x")
    assert not (tmp_path / "outside").exists()


def test_local_store_leaves_no_temporary_files_and_ignores_strays(tmp_path):
    store = LocalStore(tmp_path / "store")
    run(store.put, "keys/one", b"k")
    (tmp_path / "store" / "keys" / ".tmp-two.123").write_bytes(b"half")
    assert [i.name for i in run(store.list, "keys/")] == ["keys/one"]
    assert sorted(os.listdir(tmp_path / "store" / "keys")) == [".tmp-two.123", "one"]


def test_s3_store_sends_a_sha256_checksum_the_server_keeps(s3_env, bucket):
    store = s3_store(s3_env, bucket)
    run(store.put, "obj", b"hello")
    head = s3_env.client().head_object(Bucket=bucket, Key="repo/obj", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="


def test_s3_store_md5_mode_is_verified_by_the_server(s3_env, bucket):
    store = s3_store(s3_env, bucket, checksum="md5")
    run(store.put, "obj", b"hello md5")
    assert run(store.get, "obj") == b"hello md5"


def test_missing_bucket_is_reported_by_name(s3_env):
    store = s3_store(s3_env, "no-such-bucket-here")
    with pytest.raises(BucketNotFound, match="no-such-bucket-here"):
        run(store.check)
    with pytest.raises(BucketNotFound):
        run(store.get, "config")


def test_refused_credentials_fail_at_once_without_retries(s3_env, bucket, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    store = s3_store(s3_env, bucket, retry=RetryPolicy(attempts=6, base_delay=1.0))
    start = time.monotonic()
    with pytest.raises(AccessDenied, match="access denied"):
        run(store.check)
    with pytest.raises(AccessDenied):
        run(store.put, "x", b"y")
    assert time.monotonic() - start < 3


def test_unreachable_endpoint_fails_after_bounded_retries(s3_env, bucket):
    proxy = FaultyProxy(1)
    proxy.close()   # nothing listens on its port any more
    store = S3Store(bucket, "", S3Options(endpoint_url=proxy.endpoint, retry=FAST_RETRIES,
                                          connect_timeout=1))
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match="cannot reach"):
        run(store.get, "config")
    assert time.monotonic() - start < 10


def proxied_store(proxy, bucket, **options) -> S3Store:
    """A store with a fresh connection pool, so the proxy's per-connection faults
    hit its very first requests."""
    options.setdefault("retry", FAST_RETRIES)
    return S3Store(bucket, "p", S3Options(endpoint_url=proxy.endpoint, **options))


@pytest.mark.parametrize("fault", ["reset", "503", "500"])
def test_transient_failures_are_retried_until_the_request_succeeds(s3_env, bucket, fault):
    target = int(s3_env.endpoint.rsplit(":", 1)[1])
    run(s3_store(s3_env, bucket, prefix="p").put, "obj", b"payload")
    with FaultyProxy(target, [fault, fault]) as proxy:
        assert run(proxied_store(proxy, bucket).get, "obj") == b"payload"
        assert proxy.faults_injected == 2
    with FaultyProxy(target, [fault, fault]) as proxy:
        run(proxied_store(proxy, bucket).put, "obj2", b"second")
        assert proxy.faults_injected == 2
    assert run(s3_store(s3_env, bucket, prefix="p").get, "obj2") == b"second"


def test_a_stalled_server_times_out_and_is_retried(s3_env, bucket):
    target = int(s3_env.endpoint.rsplit(":", 1)[1])
    run(s3_store(s3_env, bucket, prefix="p").put, "obj", b"payload")
    with FaultyProxy(target, ["stall"]) as proxy:
        assert run(proxied_store(proxy, bucket, read_timeout=0.5).get, "obj") == b"payload"
        assert proxy.faults_injected == 1


def test_persistent_server_errors_give_up_with_a_clear_error(s3_env, bucket):
    target = int(s3_env.endpoint.rsplit(":", 1)[1])
    with FaultyProxy(target, ["503"] * 10) as proxy:
        with pytest.raises(StoreUnavailable):
            run(proxied_store(proxy, bucket).get, "obj")
        assert proxy.faults_injected == FAST_RETRIES.attempts


def test_repository_locations_name_the_right_store(tmp_path):
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    s3 = open_store("s3://bucket/some/prefix", S3Options(endpoint_url="http://127.0.0.1:9"))
    assert (s3.bucket, s3.prefix) == ("bucket", "some/prefix/")
    custom = open_store("s3+http://127.0.0.1:9000/bkt/pre")
    assert (custom.bucket, custom.prefix, custom.endpoint) == ("bkt", "pre/", "http://127.0.0.1:9000")
    for bad in ("ftp://x/y", "s3://", ""):
        with pytest.raises(Exception):
            open_store(bad)


def make_self_signed_certificate(directory):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloudfs test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_tls_is_verified_and_a_private_ca_bundle_can_be_trusted(tmp_path, s3_env):
    from cloudfs import locals3

    cert_file, key_file = make_self_signed_certificate(tmp_path)
    (tmp_path / "data" / "tlsbucket").mkdir(parents=True)
    server = locals3.start_rclone(tmp_path / "data", cert_file=cert_file, key_file=key_file)
    try:
        untrusted = S3Store("tlsbucket", "", S3Options(endpoint_url=server.endpoint, retry=FAST_RETRIES))
        with pytest.raises(StoreUnavailable, match="TLS verification"):
            run(untrusted.check)
        trusted = S3Store("tlsbucket", "", S3Options(endpoint_url=server.endpoint, retry=FAST_RETRIES,
                                                     ca_bundle=str(cert_file)))
        run(trusted.put, "obj", b"over tls")
        assert run(trusted.get, "obj") == b"over tls"
    finally:
        locals3.stop(server.proc)


@pytest.mark.timeout(60)
def test_the_s3_client_finds_its_model_without_listing_every_aws_service():
    from cloudfs.store import s3

    loader = s3._session(S3Options()).get_component("data_loader")
    assert isinstance(loader, s3._Loader)
    known = loader.list_available_services("service-2")
    assert "s3" in known and "no-such-service" not in known
    assert "s3" in list(known) and len(known) > 100       # listing them all still works when asked
