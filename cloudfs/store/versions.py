"""Walking the versions of a versioned bucket one object name at a time.

A version listing pages through every version and delete marker below a
prefix; `versions_by_name` regroups the pages so that each name comes with all
its versions, newest first, while only one name's versions are held at a time
(a listing of a million chunks costs no more memory than one of ten).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from cloudfs.store.base import ObjectVersion, Store


async def versions_by_name(store: Store, prefix: str) -> AsyncIterator[tuple[str, list[ObjectVersion]]]:
    """(name, its versions newest first) for every name below `prefix`, in name order."""
    name, versions, after = None, [], None
    while True:
        page = await store.version_page(prefix, after)
        for version in page.versions:
            if version.name != name:
                if versions:
                    yield name, versions
                name, versions = version.name, []
            versions.append(version)
        if page.after is None:
            break
        after = page.after
    if versions:
        yield name, versions


def version_at(versions: list[ObjectVersion], moment: datetime) -> ObjectVersion | None:
    """The version that was current at `moment` (versions newest first): the newest
    one stored by then, or None if there was none or the newest was a delete marker."""
    for version in versions:
        if version.modified <= moment:
            return None if version.deleted else version
    return None


def first_version(versions: list[ObjectVersion]) -> ObjectVersion | None:
    """The oldest version that holds data. Objects are write-once, so that is the one
    the writer stored; any later version of the name was written by someone else."""
    return next((version for version in reversed(versions) if not version.deleted), None)
