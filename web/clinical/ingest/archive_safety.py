"""Reading the files of a batch from an archive or a server folder without trusting them.

Nothing here writes to disk: members are read into memory, one at a time, and stored by the
upload service under names it makes itself (the SOPInstanceUID), so a member named
`../../etc/passwd` can never land outside MEDIA_ROOT (zip-slip); such members are refused and
said so. Zip bombs are stopped by limits on the member count, the total uncompressed size and
the compression ratio, and by never reading more bytes than a member's header declares.
Archives inside the archive are refused, not opened. A refused member never stops the others.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from django.conf import settings

# Extensions and leading bytes of the archives we refuse to open inside an archive.
ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst")
ARCHIVE_MAGIC = (b"PK\x03\x04", b"\x1f\x8b", b"7z\xbc\xaf\x27\x1c", b"Rar!", b"BZh", b"\xfd7zXZ")
PATIENTS_CSV = "patients.csv"
# Below this size a high ratio is harmless (a small blank image compresses a lot).
RATIO_CHECK_FROM_BYTES = 1 * 2**20


class ArchiveRefused(Exception):
    """The archive as a whole cannot be read; `str()` is the message for the user."""


@dataclass(frozen=True)
class Member:
    """One file of a batch: its bytes, or why it was refused (data is None)."""

    name: str
    data: bytes | None
    reason: str = ""


def member_name_unsafe(name: str) -> str:
    """Why a member name must not be used ('' when it is safe): absolute, a drive letter, a
    parent directory, a NUL byte. Backslashes count as separators (archives made on Windows)."""
    if "\x00" in name:
        return "Its name contains a NUL byte."
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return "Its path is absolute: it would be written outside the import folder (refused)."
    if ".." in PurePosixPath(posix).parts:
        return "Its path climbs out of the archive ('..'): refused (zip-slip)."
    return ""


def text_name(name: str) -> str:
    """A file system name as text that can be stored and shown: bytes that are not UTF-8
    (a Latin-1 name on a Linux disk arrives as surrogates) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def is_archive(name: str, head: bytes) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES) or head.startswith(ARCHIVE_MAGIC)


class ZipFiles:
    """The files of a .zip, read one at a time (memory holds one member, not the archive).
    Raises ArchiveRefused for an archive that is not a zip, has too many members, or would
    expand beyond the size limit. Use as a context manager."""

    def __init__(self, source: str | Path | IO[bytes]) -> None:
        try:
            self.archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ArchiveRefused(f"This is not a readable .zip archive ({exc}).") from None
        infos = [i for i in self.archive.infolist() if not i.is_dir() and not _is_macos_litter(i.filename)]
        if len(infos) > settings.RADTRIAGE_ARCHIVE_MAX_MEMBERS:
            self.archive.close()
            raise ArchiveRefused(
                f"The archive has {len(infos):,} files; at most "
                f"{settings.RADTRIAGE_ARCHIVE_MAX_MEMBERS:,} are accepted in one batch."
            )
        total = sum(i.file_size for i in infos)
        if total > settings.RADTRIAGE_ARCHIVE_MAX_BYTES:
            self.archive.close()
            raise ArchiveRefused(
                f"The archive would expand to {total:,} bytes; at most "
                f"{settings.RADTRIAGE_ARCHIVE_MAX_BYTES:,} are accepted (zip bomb?)."
            )
        self.patients: dict[str, bytes] = {}
        self.infos: list[zipfile.ZipInfo] = []
        for info in infos:
            if PurePosixPath(info.filename).name.lower() == PATIENTS_CSV:
                member = _zip_member(self.archive, info)
                if member.data is not None:
                    self.patients[str(PurePosixPath(member.name).parent)] = member.data
                    continue
            self.infos.append(info)
        self.count = len(self.infos)

    def members(self) -> Iterator[Member]:
        for info in self.infos:
            yield _zip_member(self.archive, info)

    def __enter__(self) -> ZipFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.archive.close()


def _is_macos_litter(name: str) -> bool:
    return name.startswith("__MACOSX/") or PurePosixPath(name).name.startswith("._")


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Member:
    name = info.filename
    unsafe = member_name_unsafe(name)
    if unsafe:
        return Member(name, None, unsafe)
    if info.flag_bits & 0x1:
        return Member(name, None, "It is encrypted; send it without a password.")
    if name.lower().endswith(ARCHIVE_SUFFIXES):
        return Member(name, None, "It is an archive inside the archive; nested archives are not opened.")
    if info.file_size > settings.RADTRIAGE_MAX_UPLOAD_BYTES:
        return Member(
            name,
            None,
            f"It is {info.file_size:,} bytes; the largest file accepted is "
            f"{settings.RADTRIAGE_MAX_UPLOAD_BYTES:,} bytes.",
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size >= RATIO_CHECK_FROM_BYTES and ratio > settings.RADTRIAGE_ARCHIVE_MAX_RATIO:
        return Member(
            name,
            None,
            f"It compresses {ratio:,.0f} to 1, more than the {settings.RADTRIAGE_ARCHIVE_MAX_RATIO:,.0f} "
            "to 1 accepted (zip bomb?).",
        )
    try:
        with archive.open(info) as handle:
            data = handle.read(info.file_size + 1)  # never more than the header promised
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        return Member(name, None, f"It cannot be read from the archive ({exc}).")
    if len(data) > info.file_size:
        return Member(name, None, "It expands beyond the size its header declares (zip bomb?).")
    if is_archive(name, data[:8]):
        return Member(name, None, "It is an archive inside the archive; nested archives are not opened.")
    return Member(name, data)


class FolderFiles:
    """The files under a server folder (sorted), read one at a time, like ZipFiles: symbolic
    links are refused (they could point anywhere), archives inside are refused, hidden files
    skipped."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.patients: dict[str, bytes] = {}
        self.paths: list[Path] = []
        for path in sorted(folder.rglob("*")):
            if path.name.startswith(".") or (path.is_dir() and not path.is_symlink()):
                continue
            if path.name.lower() == PATIENTS_CSV and not path.is_symlink():
                self.patients[text_name(path.relative_to(folder).parent.as_posix())] = path.read_bytes()
                continue
            self.paths.append(path)
        if len(self.paths) > settings.RADTRIAGE_ARCHIVE_MAX_MEMBERS:
            raise ArchiveRefused(
                f"The folder has {len(self.paths):,} files; at most "
                f"{settings.RADTRIAGE_ARCHIVE_MAX_MEMBERS:,} are accepted in one batch."
            )
        self.count = len(self.paths)

    def members(self) -> Iterator[Member]:
        for path in self.paths:
            yield self._member(path)

    def _member(self, path: Path) -> Member:
        name = text_name(path.relative_to(self.folder).as_posix())
        if path.is_symlink():
            return Member(name, None, "It is a symbolic link; links are not followed.")
        size = path.stat().st_size
        if size > settings.RADTRIAGE_MAX_UPLOAD_BYTES:
            return Member(
                name,
                None,
                f"It is {size:,} bytes; the largest file accepted is "
                f"{settings.RADTRIAGE_MAX_UPLOAD_BYTES:,} bytes.",
            )
        data = path.read_bytes()
        if is_archive(name, data[:8]):
            return Member(name, None, "It is an archive; archives inside a batch are not opened.")
        return Member(name, data)

    def __enter__(self) -> FolderFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class UploadedFiles:
    """Files sent from the browser, already in memory; one over the upload size limit is
    refused alone, as in a folder or an archive."""

    def __init__(self, files: list[tuple[str, bytes]]) -> None:
        self.files = files
        self.patients: dict[str, bytes] = {}
        self.count = len(files)

    def members(self) -> Iterator[Member]:
        limit = settings.RADTRIAGE_MAX_UPLOAD_BYTES
        for name, data in self.files:
            if len(data) > limit:
                yield Member(
                    name, None, f"It is {len(data):,} bytes; the largest file accepted is {limit:,} bytes."
                )
            else:
                yield Member(name, data)

    def __enter__(self) -> UploadedFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        return None
