"""Durable state of one memory shard: Parquet snapshots plus an update log (no pickle).

Layout under the memory's location (a local path or any pyarrow filesystem URI)::

    <memory>/memory.json                       the MemorySpec
    <memory>/shard-003/snapshot-00000002.parquet   state after every update before generation 2
    <memory>/shard-003/index-00000002.bin      its search index (search=ivf; checked by the search)
    <memory>/shard-003/log-00000002.bin        the updates applied since that snapshot

A snapshot is one Parquet table (slot, key, value, write_time) plus the shard's clock, recent
slots and per-writer last sequence numbers as JSON in its metadata. Snapshot ``g`` holds every
update logged before generation ``g``'s log: writing it starts with ``roll()`` (later appends go
to ``log-<g>``), so it can be written in another thread while appends go on. It is written
under a temporary name, synced, renamed into place and its folder synced (``files.publish``);
only then are the older generations deleted. Recovery reads the newest snapshot and replays
every log from its generation on.

A log is a sequence of frames ``b"LLOG" | uint32 length | uint32 crc32 | payload``, the payload one
update record (``records.Update``: the rows a shard update wrote, its writer id, sequence number
and clock). A frame is appended with raw
``os.write`` calls (``write``) and synced before the update is acknowledged (``sync``): by the
group commit thread (``group_commit``), one sync for every frame written before it began. A
write that fails is cut off the file again (``ftruncate`` + sync), and so is every frame after
the last durable one when a sync fails, so a failed update never reappears. A new log file's
folder is synced before its first frame is acknowledged. On filesystems without appends
(object stores) each frame is its own object under ``log-<generation>/``.

Recovery drops an incomplete final frame of the newest log (a crash during its append, never
acknowledged), counts it in ``torn_frames`` and cuts it off. Anything else that is not whole,
a frame failing its checksum anywhere, a truncated frame before the last one, or an unreadable
snapshot, raises CorruptStateError naming the file: the shard refuses to start rather than
drop data it acknowledged.
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lifelong.distributed.group_commit import GroupCommit
from lifelong.distributed.records import Snapshot, Update, encode_frame, read_frames
from lifelong.errors import CorruptStateError, DurabilityError
from lifelong.files import fsync_dir, fsync_file, make_dirs, publish, write_all


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a pyarrow filesystem URI."""
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


class ShardStore:
    """Snapshots and update log of shard ``index`` of the memory at ``location``.

    Attributes:
        generation: the log that appends go to (``log-<generation>``).
        snapshot_generation: the newest durable snapshot (0: none yet).
        torn_frames: incomplete final frames dropped when the log was loaded.
        commit: the log's group commit (``commit.failures``: syncs that lost frames).
    """

    def __init__(self, location: str, index: int):
        self.fs, base = filesystem(location)
        self.dir = f"{base}/shard-{index:03d}"
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        if self.local:
            make_dirs(self.dir)  # the shard's folder survives a power cut
        else:
            self.fs.create_dir(self.dir, recursive=True)
        self._fd: int | None = None  # the open local log
        self.commit = GroupCommit(lambda: os.fsync(self._fd), self._cut, self._not_logged)
        self._broken: str | None = None  # why appends are refused until a restart
        self.generation = 0
        self.snapshot_generation = 0
        self.torn_frames = 0
        self._frames = 0  # frames in the current object-store log

    # ------------------------------------------------------------------------------ reading
    def _generations(self, prefix: str) -> list[int]:
        gens = []
        for info in self.fs.get_file_info(pafs.FileSelector(self.dir)):
            name = info.base_name
            if name.startswith(prefix) and not name.endswith(".tmp"):
                digits = name[len(prefix):].split(".")[0]
                if digits.isdigit():
                    gens.append(int(digits))
        return sorted(set(gens))

    def snapshot_path(self, gen: int) -> str:
        return f"{self.dir}/snapshot-{gen:08d}.parquet"

    def load(self) -> tuple[Snapshot | None, list[Update]]:
        """The newest snapshot (None before the first) and the updates logged after it, in
        order (each with its ``source`` file). An incomplete final frame of the newest log
        is dropped (counted in ``torn_frames``) and cut off the file.

        Raises:
            CorruptStateError: a snapshot or frame is unreadable, naming the file.
        """
        snapshots = self._generations("snapshot-")
        self.snapshot_generation = snapshots[-1] if snapshots else 0
        snapshot = self._read_snapshot(self.snapshot_generation) if snapshots else None
        if snapshot is not None:
            snapshot.index = self._read_index(self.snapshot_generation)
        # Every log from the snapshot's generation on: a snapshot written in the background
        # covers the logs before its own generation only.
        logs = [g for g in self._generations("log-") if g >= self.snapshot_generation]
        updates = []
        for gen in logs:
            updates += self._read_log(gen, last=gen == logs[-1])
        self.generation = max([self.snapshot_generation, *logs])
        self._drop_leftovers()
        return snapshot, updates

    def _drop_leftovers(self) -> None:
        """Deletes what a crash during a snapshot may leave: a partial temporary file and the
        generations the newest snapshot supersedes."""
        for info in self.fs.get_file_info(pafs.FileSelector(self.dir)):
            if info.base_name.endswith(".tmp"):
                self.fs.delete_file(info.path)
        self._delete_before(self.snapshot_generation)

    def _read_snapshot(self, gen: int) -> Snapshot:
        path = self.snapshot_path(gen)
        try:
            with self.fs.open_input_file(path) as fh:
                table = pq.read_table(fh, page_checksum_verification=True)
            return Snapshot.from_table(table)
        except CorruptStateError:
            raise
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise CorruptStateError(f"{path}: unreadable snapshot ({exc})") from None

    def index_path(self, gen: int) -> str:
        return f"{self.dir}/index-{gen:08d}.bin"

    def _read_index(self, gen: int) -> bytes | None:
        """The search index saved with snapshot ``gen`` (None if there is none or it cannot be
        read: the shard rebuilds it from the keys; its bytes are checked by the search)."""
        try:
            with self.fs.open_input_stream(self.index_path(gen)) as fh:
                return fh.read()
        except (OSError, FileNotFoundError):
            return None

    def _read_log(self, gen: int, last: bool) -> list[Update]:
        if self.local:
            path = f"{self.dir}/log-{gen:08d}.bin"
            with open(path, "rb") as fh:
                data = fh.read()
            payloads, good = read_frames(data, path, last)
            frames = [(path, p) for p in payloads]
            if good < len(data):  # a torn final frame: never acknowledged
                self.torn_frames += 1
                os.truncate(path, good)
                fsync_file(path)
        else:
            folder = f"{self.dir}/log-{gen:08d}"
            infos = sorted(self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)),
                           key=lambda i: i.base_name)
            frames = []
            for i, info in enumerate(infos):
                with self.fs.open_input_stream(info.path) as fh:
                    data = fh.read()
                payloads, good = read_frames(data, info.path, last and i == len(infos) - 1)
                if good < len(data):
                    self.torn_frames += 1
                    self.fs.delete_file(info.path)
                    infos = infos[:i]
                frames += [(info.path, p) for p in payloads]
            self._frames = len(infos)
        updates = []
        for path, payload in frames:
            try:
                update = Update.from_bytes(payload)
            except Exception as exc:
                raise CorruptStateError(f"{path}: undecodable update ({exc})") from None
            update.source = path
            updates.append(update)
        return updates

    # ------------------------------------------------------------------------------ writing
    def append(self, update: Update) -> None:
        """Logs one update durably: ``sync(write(update))``."""
        self.sync(self.write(update))

    def write(self, update: Update) -> int:
        """Writes one update's frame to the log, not yet durable; returns its number for
        ``sync`` (0 on an object store, where each frame is durable once written).

        Raises:
            DurabilityError: the update is not logged and the log is exactly as before (a
                failed write is cut off again); if even that fails, every later append is
                refused until the shard restarts (its recovery drops the torn frame).
        """
        if self._broken or self.commit.broken:
            raise DurabilityError(self._broken or self.commit.broken)
        frame = encode_frame(update.to_bytes())
        if not self.local:
            folder = f"{self.dir}/log-{self.generation:08d}"
            path = f"{folder}/{self._frames:012d}.bin"
            try:
                if self._frames == 0:
                    self.fs.create_dir(folder, recursive=True)
                with self.fs.open_output_stream(path) as fh:
                    fh.write(frame)
            except Exception as exc:  # noqa: BLE001 - whatever the filesystem raises
                if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
                    self.fs.delete_file(path)
                raise DurabilityError(f"{path}: update not logged ({exc})") from None
            self._frames += 1
            return 0
        with self.commit.lock:
            fd = self._open_log()
            try:
                write_all(fd, frame)
            except OSError as exc:
                self._undo_append()
                raise DurabilityError(self._not_logged(exc)) from None
            return self.commit.written(self.commit.size + len(frame))

    def sync(self, frame: int) -> None:
        """Returns once frame number ``frame`` (from ``write``) and all before it are durable.

        Raises:
            DurabilityError: a failed sync lost it (and every frame after the last durable
                one): they were cut off the log, and the shard must rebuild its state from
                its files (``commit.failures`` counts such losses).
        """
        self.commit.wait(frame)

    def sync_soon(self) -> None:
        """Begins syncing the frames written so far in the group commit thread."""
        if self.local:
            self.commit.sync_soon()

    def _log_path(self) -> str:
        return f"{self.dir}/log-{self.generation:08d}.bin"

    def _not_logged(self, exc: OSError) -> str:
        return (f"{self._log_path()}: update not logged ({exc.strerror or exc}); nothing was "
                "applied")

    def _open_log(self) -> int:
        if self._fd is None:
            path = self._log_path()
            created = not os.path.exists(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if created:
                try:
                    fsync_dir(self.dir)  # the new log's name survives a power cut
                except OSError as exc:
                    os.close(fd)
                    os.unlink(path)
                    raise DurabilityError(self._not_logged(exc)) from None
            self._fd = fd
            self.commit.start(os.fstat(fd).st_size)
        return self._fd

    def _cut(self, size: int) -> None:
        """Truncates the open log to ``size`` bytes, durably (after a failed write or sync)."""
        os.ftruncate(self._fd, size)
        os.fsync(self._fd)

    def _undo_append(self) -> None:
        """Cuts a failed write's bytes off the log; ``commit.lock`` held."""
        try:
            self._cut(self.commit.size)
        except OSError as exc:
            self._broken = (f"{self._log_path()}: a failed append could not be undone "
                            f"({exc.strerror or exc}); the shard accepts no writes until it "
                            "restarts")
            self._close()

    def close(self) -> None:
        """Closes the open log once every frame written is durable (appends reopen it)."""
        with self.commit.lock:
            self._close()

    def _close(self) -> None:
        self.commit.drain()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def roll(self) -> int:
        """Starts the next generation's log for the appends that follow, once every frame
        written is durable; returns the generation a snapshot of the state before them must
        be written as.

        Raises:
            DurabilityError: a sync failed meanwhile and lost frames (nothing rolled): the
                shard's state holds updates the log no longer has.
        """
        with self.commit.lock:
            failures = self.commit.failures
            self._close()
            if self.commit.failures != failures:
                raise DurabilityError(self.commit.error)
            self.generation += 1
            self._frames = 0
            return self.generation

    def write_snapshot(self, snapshot: Snapshot, gen: int | None = None) -> None:
        """Writes the state as generation ``gen`` (default: ``roll()`` first), durable (data
        synced, renamed into place, folder synced), then drops the older generations.

        May run in another thread than the appends once ``roll()`` returned ``gen``.

        Raises:
            DurabilityError: nothing was written (the temporary file is removed); the logs
                still hold every update, so nothing acknowledged is lost.
        """
        gen = self.roll() if gen is None else gen
        table = snapshot.to_table()
        final = self.snapshot_path(gen)
        try:
            if snapshot.index is not None:  # before the snapshot: a snapshot has its index
                self._write_file(self.index_path(gen), snapshot.index)
            if self.local:
                publish(final, lambda tmp: pq.write_table(table, tmp, write_page_checksum=True))
            else:
                tmp = final + ".tmp"
                try:
                    with self.fs.open_output_stream(tmp) as fh:
                        pq.write_table(table, fh, write_page_checksum=True)
                    self.fs.move(tmp, final)
                finally:
                    if self.fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                        self.fs.delete_file(tmp)
        except Exception as exc:  # noqa: BLE001 - OSError, or pyarrow's own errors
            raise DurabilityError(f"{final}: snapshot not written ({exc})") from None
        self.snapshot_generation = max(self.snapshot_generation, gen)
        self._delete_before(gen)

    def _write_file(self, path: str, data: bytes) -> None:
        """A whole file, durable (local: ``publish``; an object store puts it whole)."""
        if self.local:
            publish(path, data)
        else:
            with self.fs.open_output_stream(path) as fh:
                fh.write(data)

    def _delete_before(self, gen: int) -> None:
        """Deletes the snapshots, indexes and logs of the generations before ``gen``."""
        for old in self._generations("snapshot-") + self._generations("log-") + \
                self._generations("index-"):
            if old < gen:
                self._delete_generation(old)

    def _delete_generation(self, gen: int) -> None:
        for path in (self.snapshot_path(gen), f"{self.dir}/log-{gen:08d}.bin",
                     self.index_path(gen)):
            if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
                self.fs.delete_file(path)
        folder = f"{self.dir}/log-{gen:08d}"
        if self.fs.get_file_info(folder).type == pafs.FileType.Directory:
            self.fs.delete_dir(folder)
