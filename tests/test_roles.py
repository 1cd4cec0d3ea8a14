"""The writer role never deletes (I9): only the maintenance store's delete works."""

import pytest
import trio

from cloudfs.cli import build_parser
from cloudfs.cli.common import open_maintenance_store, open_store_from
from cloudfs.errors import MaintenanceOnly

pytestmark = pytest.mark.timeout(30)


def test_the_writer_store_refuses_to_delete_and_the_maintenance_store_deletes(tmp_path):
    args = build_parser().parse_args(["snapshots", "--repo", str(tmp_path)])
    writer, maintenance = open_store_from(args), open_maintenance_store(args)

    async def run():
        await writer.put("snapshots/x", b"data")
        with pytest.raises(MaintenanceOnly, match="maintenance"):
            await writer.delete("snapshots/x")
        assert await writer.exists("snapshots/x")
        await maintenance.delete("snapshots/x")
        assert not await writer.exists("snapshots/x")

    trio.run(run)
