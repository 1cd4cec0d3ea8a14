"""The uploader waits out a store that goes away, and commits when it is back."""

import os

import trio

from cloudfs.repo import Repository
from cloudfs.snapshot.reader import TreeReader
from cloudfs.snapshot.source import DirectorySource
from cloudfs.store import RetryPolicy, S3Options, S3Store
from cloudfs.uploader import Uploader
from tests.faults import FaultyProxy
from tests.repo_helpers import PASSPHRASE, fast_kdf
from tests.tree_helpers import capture_directory, capture_snapshot, diff


def test_a_store_outage_during_upload_is_retried_until_the_snapshot_commits(s3_env, bucket, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for i in range(6):
        (source / f"file-{i}").write_bytes(os.urandom(300_000))
    target = int(s3_env.endpoint.rsplit(":", 1)[1])
    with FaultyProxy(target) as proxy:
        store = S3Store(bucket, "repo", S3Options(endpoint_url=proxy.endpoint,
                                                  retry=RetryPolicy(attempts=2, base_delay=0.01)))

        async def scenario():
            repo = await Repository.init(store, PASSPHRASE, kdf=fast_kdf(), use_cache=False)
            uploader = Uploader(repo, str(source), None)
            uploader.RETRY_BASE = 0.05
            proxy.add_faults(*["reset"] * 12)      # the store is gone for a dozen connections
            proxy.drop_connections()
            seen_error = []

            async def watch():
                while not seen_error:
                    if uploader.status.store_error:
                        seen_error.append(uploader.status.as_dict())
                    await trio.sleep(0.005)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                directory = DirectorySource.at(source)
                try:
                    snapshot = await uploader.commit(directory, None, 123)
                finally:
                    directory.close()
                nursery.cancel_scope.cancel()
            return repo, uploader, snapshot, seen_error

        repo, uploader, snapshot, seen_error = trio.run(scenario)
        assert proxy.faults_injected == 12
        differences = diff(capture_directory(source), capture_snapshot(TreeReader(repo), snapshot.tree))
        assert not differences
    assert seen_error and seen_error[0]["store_ok"] is False
    status = uploader.status.as_dict()
    assert status["store_ok"] and status["last_snapshot"] == snapshot.name and not status["uploading"]
