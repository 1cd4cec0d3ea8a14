"""Prune: delete the chunks no kept snapshot needs, safely beside writers (docs/prune.md).

`run.prune` is the maintenance command's whole job: one prune at a time
(`lease`), sweep the doom list a past run marked once its grace period is over
(`sweep`), then mark anew (`mark`, with `repack` for sparse chunks). `guard`
is the writers' side of the protocol. The sets of blobs the walks reach stay
on disk (cloudfs/repo/blobset.py), so memory does not grow with the
repository (I8).
"""
