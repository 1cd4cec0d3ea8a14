"""Block lists: which blob holds each block of a file.

A file of at most FANOUT blocks keeps its block ids inline in its directory
entry. A larger one has a block-list tree: leaves (level 0) hold FANOUT block
ids each, aligned (leaf k covers blocks k*FANOUT ... k*FANOUT+FANOUT-1), and each
level above holds up to FANOUT node ids of the level below. A node is the
msgpack map {"v": 1, "lv": level, "ids": [...]}, stored as a tree blob.

Because leaves are aligned to block numbers, changing a few blocks of a huge
file rewrites only the leaves that hold them plus the few nodes above; every
other leaf is reused by id. With 64 KiB blocks one leaf covers 16 MiB.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from cloudfs.repo.format import pack, unpack

FANOUT = 256
NODE_VERSION = 1

BlockId = bytes | None            # None: a block of zeros, stored nowhere
PutTree = Callable[[bytes], Awaitable[bytes]]
GetTree = Callable[[bytes], Awaitable[bytes]]


def encode_node(level: int, ids: list) -> bytes:
    return pack({"v": NODE_VERSION, "lv": level, "ids": ids})


def decode_node(data: bytes) -> tuple[int, list]:
    value = unpack(data)
    if value.get("v") != NODE_VERSION:
        raise ValueError(f"block-list node of unknown version {value.get('v')}")
    return value["lv"], [None if i is None else bytes(i) for i in value["ids"]]


async def build(ids: list[BlockId], put: PutTree) -> tuple[list[BlockId] | None, bytes | None]:
    """(inline ids, None) for small files, (None, root id) for large ones."""
    if len(ids) <= FANOUT:
        return list(ids), None
    leaves = [await put(encode_node(0, ids[i:i + FANOUT])) for i in range(0, len(ids), FANOUT)]
    return None, await _build_upper_levels(leaves, put)


async def _build_upper_levels(nodes: list[bytes], put: PutTree) -> bytes:
    """The root above a row of level-0 nodes."""
    level = 1
    while len(nodes) > FANOUT:
        nodes = [await put(encode_node(level, nodes[i:i + FANOUT])) for i in range(0, len(nodes), FANOUT)]
        level += 1
    return await put(encode_node(level, nodes))


async def read_ids(inline: list[BlockId] | None, root: bytes | None, first: int, last: int,
                   get: GetTree) -> list[BlockId]:
    """Block ids first..last-1 (fewer if the list is shorter)."""
    if inline is not None:
        return inline[first:last]
    if root is None or last <= first:
        return []
    out: list[BlockId] = []
    await _collect(root, None, first, last, 0, get, out)
    return out


async def _collect(node_id: bytes, level: int | None, first: int, last: int, base: int,
                   get: GetTree, out: list) -> None:
    node_level, ids = decode_node(await get(node_id))
    span = FANOUT ** node_level            # blocks under each id of this node
    for index, child in enumerate(ids):
        start = base + index * span
        if start >= last:
            break
        if start + span <= first:
            continue
        if node_level == 0:
            out.append(child)
        else:
            await _collect(child, node_level - 1, first, last, start, get, out)


async def leaf_ids(root: bytes, get: GetTree) -> list[bytes]:
    """The ids of every leaf of a block-list tree, in order."""
    level, ids = decode_node(await get(root))
    if level == 0:
        return [root]
    if level == 1:
        return ids
    out: list[bytes] = []
    for child in ids:
        out.extend(await leaf_ids(child, get))
    return out


async def update(inline: list[BlockId] | None, root: bytes | None, old_count: int, new_count: int,
                 changed: dict[int, BlockId], get: GetTree, put: PutTree
                 ) -> tuple[list[BlockId] | None, bytes | None]:
    """The block list of a file that had old_count blocks and now has new_count,
    where `changed` gives the new id of every block that changed (blocks past
    old_count that are not in `changed` are zeros). Unchanged leaves keep their
    ids; only changed leaves and the nodes above them are written."""
    if new_count <= FANOUT:
        ids = await read_ids(inline, root, 0, min(old_count, new_count), get)
        ids += [None] * (new_count - len(ids))
        for index, block_id in changed.items():
            if index < new_count:
                ids[index] = block_id
        return ids, None
    old_leaves = await leaf_ids(root, get) if root is not None else None
    touched = {index // FANOUT for index in changed}
    leaves: list[bytes] = []
    for leaf in range((new_count + FANOUT - 1) // FANOUT):
        low, high = leaf * FANOUT, min(new_count, (leaf + 1) * FANOUT)
        same_extent = min(old_count, (leaf + 1) * FANOUT) == high
        if leaf not in touched and same_extent and old_leaves is not None and leaf < len(old_leaves):
            leaves.append(old_leaves[leaf])
            continue
        ids = await read_ids(inline, root, low, min(high, old_count), get) if old_count > low else []
        ids += [None] * (high - low - len(ids))
        for index in range(low, high):
            if index in changed:
                ids[index - low] = changed[index]
        leaves.append(await put(encode_node(0, ids)))
    return None, await _build_upper_levels(leaves, put)
