"""Snapshots as Merkle trees of blobs: directory nodes and block lists.

A snapshot's root is a directory node; each entry of a directory points at the
node of a subdirectory or lists the blocks of a file, directly or through a
block-list tree. Every node is a tree blob named by its keyed hash, so an
unchanged subtree, or an unchanged stretch of a huge file's block list, is
reused by id from the previous snapshot without being read or written again.
"""
