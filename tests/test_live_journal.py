"""The journal: replay, torn tails, group commit, compaction, epochs, clean stops."""

from __future__ import annotations

import os
import time

import pytest
import trio

from cloudfs.live import journal as journal_module
from cloudfs.live import records
from cloudfs.live.changes import TO_END
from cloudfs.live.journal import JOURNAL_NAME, Journal, read_journal
from cloudfs.live.records import FinalStat, JournalFormatError

pytestmark = pytest.mark.timeout(60)


def test_records_survive_a_reopen(tmp_path):
    journal = Journal.open(tmp_path)
    journal.record_write(10, 0, 4096)
    journal.record_write(10, 4096, 4096)
    journal.record_truncate(11, 100)
    journal.record_meta(12)
    journal.record_dir(13)
    journal.record_whole(14)
    journal.close()
    state = read_journal(tmp_path)
    pending = state.pending()
    assert list(pending.data[10]) == [(0, 8192)]
    assert list(pending.data[11]) == [(100, TO_END)] and 11 in pending.meta
    assert pending.meta == {11, 12} and pending.dirs == {13} and pending.whole == {14}
    assert not state.clean_stop


def test_records_reach_the_file_without_any_sync_within_the_flush_interval(tmp_path):
    async def main():
        journal = Journal.open(tmp_path)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.run)
            journal.record_write(5, 0, 10)
            await trio.sleep(journal_module.FLUSH_INTERVAL * 3)
            assert 5 in read_journal(tmp_path).pending().data
            nursery.cancel_scope.cancel()
        journal.close()

    trio.run(main)


def test_a_torn_tail_is_ignored_and_cut_off(tmp_path):
    journal = Journal.open(tmp_path)
    journal.record_write(1, 0, 10)
    journal.flush()
    journal.record_write(2, 0, 10)
    journal.close()
    path = tmp_path / JOURNAL_NAME
    data = path.read_bytes()
    path.write_bytes(data[:-5])  # the last batch lost its end in a crash
    state = read_journal(tmp_path)
    assert set(state.pending().data) == {1}
    reopened = Journal.open(tmp_path)
    reopened.record_write(3, 0, 10)
    reopened.close()
    assert set(read_journal(tmp_path).pending().data) == {1, 3}


def test_a_damaged_batch_in_the_middle_ends_the_journal_there(tmp_path):
    journal = Journal.open(tmp_path)
    journal.record_write(1, 0, 10)
    journal.flush()
    journal.record_write(2, 0, 10)
    journal.flush()
    journal.close()
    path = tmp_path / JOURNAL_NAME
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip a bit in the last batch: its CRC no longer matches
    path.write_bytes(bytes(data))
    assert set(read_journal(tmp_path).pending().data) == {1}


def test_a_file_that_is_not_a_journal_is_refused(tmp_path):
    (tmp_path / JOURNAL_NAME).write_bytes(b"something else entirely, long enough")
    with pytest.raises(JournalFormatError):
        Journal.open(tmp_path)


def test_concurrent_syncs_share_fdatasyncs(tmp_path):
    async def main():
        journal = Journal.open(tmp_path)

        async def writer(ino):
            journal.record_write(ino, 0, 100)
            await journal.sync()

        async with trio.open_nursery() as nursery:
            for ino in range(100):
                nursery.start_soon(writer, ino)
        assert journal.syncs <= 3
        assert set(read_journal(tmp_path).pending().data) == set(range(100))
        await journal.sync()  # nothing new: no fdatasync at all
        assert journal.syncs <= 3
        journal.close()

    trio.run(main)


def test_rewriting_the_same_blocks_forever_keeps_the_journal_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_module, "COMPACT_MIN_BYTES", 256 * 1024)

    async def main():
        journal = Journal.open(tmp_path)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.run)
            largest = 0
            for round_ in range(60):
                for block in range(1000):
                    journal.record_write(7, block * 4096, 4096)
                await trio.sleep(journal_module.FLUSH_INTERVAL * 1.5)
                largest = max(largest, (tmp_path / JOURNAL_NAME).stat().st_size)
            nursery.cancel_scope.cancel()
        journal.close()
        return largest

    largest = trio.run(main)
    written = 60 * 1000 * records.RECORD_SIZE
    assert largest < 600 * 1024 < written
    assert list(read_journal(tmp_path).pending().data[7]) == [(0, 1000 * 4096)]


def test_compaction_keeps_records_made_while_it_runs(tmp_path):
    async def main():
        journal = Journal.open(tmp_path)
        for ino in range(1000):
            journal.record_write(ino, 0, 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.compact)
            for ino in range(1000, 1100):  # while the image is written out
                journal.record_write(ino, 0, 1)
                await trio.sleep(0)
        await journal.sync()
        journal.close()

    trio.run(main)
    assert set(read_journal(tmp_path).pending().data) == set(range(1100))
    assert not (tmp_path / "journal.tmp").exists()


def test_a_leftover_compaction_file_is_discarded(tmp_path):
    journal = Journal.open(tmp_path)
    journal.record_meta(1)
    journal.close()
    (tmp_path / "journal.tmp").write_bytes(b"half an image")
    reopened = Journal.open(tmp_path)
    assert reopened.pending().meta == {1}
    reopened.close()
    assert not (tmp_path / "journal.tmp").exists()


def test_seal_flips_the_epoch_and_commit_forgets_sealed_epochs(tmp_path):
    journal = Journal.open(tmp_path)
    journal.record_write(1, 0, 10)
    epoch, sealed = journal.seal()
    assert epoch == 0 and list(sealed.data[1]) == [(0, 10)]
    journal.record_write(1, 100, 10)  # the next epoch; the sealed set does not change
    assert list(sealed.data[1]) == [(0, 10)]
    journal.record_meta(2)
    second, _ = journal.seal()
    journal.record_dir(3)
    assert second == 1 and journal.epoch == 2
    assert journal.uncommitted_epochs() == [0, 1, 2]
    assert list(journal.pending().data[1]) == [(0, 10), (100, 110)]
    journal.close()

    state = read_journal(tmp_path)  # replay rebuilds every uncommitted epoch
    assert list(state.sealed) == [0, 1] and state.current_epoch == 2
    assert list(state.sealed[1].data[1]) == [(100, 110)]

    journal = Journal.open(tmp_path)
    journal.commit(0)
    assert journal.uncommitted_epochs() == [1, 2]
    assert list(journal.pending().data[1]) == [(100, 110)] and journal.pending().dirs == {3}
    with pytest.raises(ValueError):
        journal.commit(2)  # the open epoch cannot be committed
    journal.close()
    state = read_journal(tmp_path)
    assert list(state.sealed) == [1] and state.pending().meta == {2}


def test_compaction_preserves_epochs(tmp_path):
    async def main():
        journal = Journal.open(tmp_path)
        journal.record_write(1, 0, 10)
        journal.seal()
        journal.record_write(2, 0, 10)
        journal.seal()
        journal.commit(0)
        journal.record_write(3, 0, 10)
        await journal.compact()
        journal.close()

    trio.run(main)
    state = read_journal(tmp_path)
    assert list(state.sealed) == [1] and state.current_epoch == 2
    assert set(state.sealed[1].data) == {2} and set(state.current.data) == {3}


def test_a_clean_stop_keeps_final_stats_and_a_new_session_makes_it_unclean(tmp_path):
    journal = Journal.open(tmp_path)
    journal.record_write(1, 0, 10)
    journal.close_clean({1: FinalStat(10, 111, 222)})
    state = read_journal(tmp_path)
    assert state.clean_stop and state.finals == {1: FinalStat(10, 111, 222)}
    assert list(state.pending().data[1]) == [(0, 10)]

    journal = Journal.open(tmp_path)
    assert journal.previous_stop_clean and journal.previous_finals == {1: FinalStat(10, 111, 222)}
    # the session's OPEN record is durable at once: a crash now reads as unclean
    state = read_journal(tmp_path)
    assert not state.clean_stop and state.finals == {}
    journal.close()
    assert not Journal.open(tmp_path).previous_stop_clean


def test_an_image_replays_to_the_same_state(tmp_path):
    journal = Journal.open(tmp_path)
    for ino in range(50):
        journal.record_write(ino, ino * 10, 5)
        if ino % 3 == 0:
            journal.record_whole(ino + 1000)
        if ino % 10 == 0:
            journal.seal()
    journal.commit(1)
    journal.close()
    state = read_journal(tmp_path)
    again, _ = records.replay(records.image(state))
    assert again.sealed == state.sealed and again.current == state.current
    assert again.current_epoch == state.current_epoch
    assert os.path.getsize(tmp_path / JOURNAL_NAME) >= records.HEADER.size


def test_the_time_of_each_epochs_first_change_survives_seals_compaction_and_stops(tmp_path):
    """What the live RPO is computed from (`cloudfs status`)."""
    async def main():
        journal = Journal.open(tmp_path)
        assert journal.oldest_change_ns(unknown=1) is None
        before = time.time_ns()
        journal.record_write(1, 0, 10)
        first = journal.oldest_change_ns(unknown=1)
        assert before <= first <= time.time_ns()
        journal.record_write(2, 0, 10)  # later changes do not move it
        assert journal.oldest_change_ns(unknown=1) == first
        journal.seal()
        journal.record_meta(3)
        second = journal._state.first_change[1]
        assert second >= first and journal.oldest_change_ns(unknown=1) == first
        await journal.compact()
        journal.close_clean({})
        return first, second

    first, second = trio.run(main)
    journal = Journal.open(tmp_path)
    assert journal.oldest_change_ns(unknown=1) == first
    journal.commit(0)
    assert journal.oldest_change_ns(unknown=1) == second
    journal.close()
    assert Journal.open(tmp_path).oldest_change_ns(unknown=1) == second  # kept by the clean stop

    crashed = tmp_path / "crashed"
    journal = Journal.open(crashed)
    journal.record_write(1, 0, 10)
    journal.close()  # no clean stop: the open epoch's time is lost, `unknown` stands in
    journal = Journal.open(crashed)
    assert journal.oldest_change_ns(unknown=7) == 7
    journal.changes_since(5)
    assert journal.oldest_change_ns(unknown=7) == 5
    journal.seal()
    journal.commit(0)
    assert journal.oldest_change_ns(unknown=7) is None and not journal.has_pending()
    journal.close()
