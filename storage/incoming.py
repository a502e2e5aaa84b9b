"""Received instances on their way to disk: one fsync each, and proof of wholeness that survives a power cut.

The SCP writes an instance's bytes before it knows which series folder they belong to
(it reads the header meanwhile, in another thread), so they go first to
``instances/.incoming/.<SOP Instance UID>.dcm.<CRC-32 of the bytes>.<random>.tmp``: created,
written with O_SYNC (each write returns as if followed by fsync), then renamed into
``instances/<study>/<series>/`` once the header is read.

Why one fsync is enough, and where it is not:

* On ext4, XFS and btrfs, fsync of a newly created file also makes its directory entry
  durable: the entry is created in the same journal transaction as the inode, and the
  fsync commits that transaction (ext4's jbd2 commits in order, XFS forces its log up to
  the inode's last change, btrfs logs a new inode's references). After the fsync the
  bytes are on disk under the temporary name.
* The rename that follows becomes durable with the next journal commit. If a power cut
  comes first, the file is still there under its temporary name, and the checksum in
  that name proves it whole: ``interrupted_instances`` (at start, before serving) hands
  back every such verified file to be moved into place, and removes the others (partial
  writes, never acknowledged).
* On any other file system (or where the type is unknown) the destination folder is
  fsynced after each rename, so the final name is durable before the SCP answers.
"""
from __future__ import annotations

import os
import re
import secrets
import zlib
from pathlib import Path

from .errors import StorageError

TEMP_SUFFIX = ".tmp"
INCOMING = ".incoming"
# ".<SOP Instance UID>.dcm.<crc32, 8 hex>.<random>.tmp"
_CHECKED_TEMP = re.compile(r"^\.(?P<final>[0-9A-Za-z][0-9A-Za-z._-]*\.dcm)\.(?P<crc>[0-9a-f]{8})\.[0-9a-f]+\.tmp$")
# File systems on which fsync of a new file makes its directory entry durable too (module docstring).
NAME_DURABLE_WITH_FILE = frozenset({"ext4", "xfs", "btrfs"})


class IncomingInstance:
    """One instance's bytes in a checksummed temporary file: ``write()`` then ``InstanceFiles.place_instance``."""

    def __init__(self, folder: Path, file_name: str, data: bytes):
        self.file_name = file_name  # the final name, <SOP Instance UID>.dcm
        self.data = data
        self.path = folder / f".{file_name}.{zlib.crc32(data):08x}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:  # O_SYNC: each write returns once on disk, as if followed by fsync (open(2)), in one system call
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_SYNC,
                                           0o644)
        except OSError as exc:
            raise StorageError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def write(self) -> None:
        """Write every byte synchronously (the file, hence its name on ext4/XFS/btrfs); a failure removes the file.

        One ``write`` with O_SYNC instead of ``write`` + ``fsync``: the calling thread holds
        the GIL once, not twice, while another thread reads the header (``dicom_node.dimse.scp``).
        """
        try:
            view = memoryview(self.data)
            while view:
                view = view[os.write(self._fd, view):]
            self._close()
        except OSError as exc:
            self.discard()
            raise StorageError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def discard(self) -> None:
        """Remove the temporary file (a refused or failed instance)."""
        self._close()
        self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def interrupted_instances(instances_dir: Path) -> tuple[list[Path], list[Path]]:
    """(verified temporary files to place, partial ones removed) left by a crash under ``instances_dir``.

    A verified file's bytes match the checksum in its name: it was written whole and
    fsynced, and may have been acknowledged. When several hold the same SOP Instance UID,
    the newest is kept. Temporary files of the earlier layout (in series folders, without
    checksum) were never acknowledged (that layout fsynced the folder before answering).
    """
    if not instances_dir.is_dir():
        return [], []
    whole: dict[str, list[Path]] = {}
    removed = []
    for path in sorted(instances_dir.rglob(f".*{TEMP_SUFFIX}")):
        match = _CHECKED_TEMP.match(path.name)
        if match and path.parent.name == INCOMING and _crc_of(path) == int(match["crc"], 16):
            whole.setdefault(match["final"], []).append(path)
        else:
            path.unlink(missing_ok=True)
            removed.append(path)
    kept = []
    for temps in whole.values():
        newest, *older = sorted(temps, key=lambda p: p.stat().st_mtime_ns, reverse=True)
        kept.append(newest)
        for path in older:
            path.unlink(missing_ok=True)
            removed.append(path)
    return kept, removed


def final_name(temp: Path) -> str:
    """``<SOP Instance UID>.dcm`` of a checksummed temporary file."""
    match = _CHECKED_TEMP.match(temp.name)
    if not match:
        raise StorageError(f"{temp.name} is not an incoming instance's temporary file")
    return match["final"]


def filesystem_type(path: Path) -> str:
    """The type of the file system holding ``path`` (e.g. 'ext4', 'xfs'), from /proc/self/mountinfo; '' if unknown."""
    target = Path(path).resolve()
    while not target.exists() and target != target.parent:
        target = target.parent
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return ""
    best, kind = "", ""
    for line in lines:
        fields = line.split()
        try:
            mount_point = fields[4].replace("\\040", " ")
            fs_type = fields[fields.index("-") + 1]
        except (IndexError, ValueError):
            continue
        if (target == Path(mount_point) or Path(mount_point) in target.parents) and len(mount_point) >= len(best):
            best, kind = mount_point, fs_type
    return kind


def _crc_of(path: Path) -> int | None:
    try:
        return zlib.crc32(path.read_bytes())
    except OSError:
        return None
