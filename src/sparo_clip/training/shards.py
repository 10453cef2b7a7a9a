"""Training shards read with every sample accounted for.

open_clip_train's webdataset reader skips what it cannot read, but a shard whose good samples are followed by
garbage (or that was cut at a member boundary) ends early without a word, blank captions are trained on, and a
pass that yields fewer samples than one batch makes the loader wait forever. :func:`shard_samples` reads the
same ``.tar`` shards and, per shard, warns with the shard's name and what it skipped; per pass (all of one
worker's shards) it raises :class:`DataError` when nothing, or less than one batch, could be read.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from sparo_clip.errors import DataError
from sparo_clip.inputs import is_local

_logger = logging.getLogger("sparo_clip.training.shards")
SHARD_IMAGE_EXTS = _IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")  # what open_clip_train decodes
_END_OF_ARCHIVE = 512  # a tar ends with zero blocks (two by POSIX; at least one accepted)


class CorruptShardError(OSError):
    """A shard with unreadable bytes (passed to the loader's error handler, then summarised)."""


@dataclass
class ShardReport:
    """What was read from one shard."""

    url: str
    samples: int = 0  # usable samples yielded (image + non-blank caption)
    blank: int = 0  # samples skipped for a blank caption
    incomplete: int = 0  # samples skipped for a missing image or caption
    error: str | None = None  # why the rest of the shard was skipped
    expected: int | None = None  # samples listed for it in sizes.json
    notes: list[str] = field(default_factory=list)
    members: set[str] = field(default_factory=set)  # member extensions met (".png", ".txt", ...)

    def found(self) -> str:
        """What a shard without usable samples held (its member extensions), for the message."""
        kinds = ", ".join(sorted(self.members)[:8]) or "no members"
        return f"no usable samples (an image {', '.join('.' + e for e in _IMAGE_EXTS)} with a .txt caption); found {kinds}"

    def warning(self) -> str | None:
        """The one-line warning for this shard, or None when it was read whole and clean."""
        parts = []
        if self.error is not None:
            skipped = ""
            if self.expected is not None:
                lost = max(self.expected - self.samples - self.blank - self.incomplete, 0)
                skipped = f", skipped {lost} of its {self.expected} samples (sizes.json)"
            parts.append(f"unreadable ({self.error}): read {self.samples} samples{skipped}")
        if self.blank:
            parts.append(f"skipped {self.blank} sample(s) with a blank caption")
        if self.incomplete:
            parts.append(
                f"skipped {self.incomplete} sample(s) without both an image and a caption (members found: "
                f"{', '.join(sorted(self.members)[:8])})"
            )
        return f"shard {self.url}: " + "; ".join(parts) if parts else None


def probe_shard(path: str) -> str | None:
    """Why a local shard cannot be opened as a tar file (reads its first header only), or None."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with tarfile.open(path, "r:"):
            return None
    except (tarfile.TarError, OSError) as e:
        return str(e) or type(e).__name__


def member_names(path: str, limit: int = 64) -> list[str] | None:
    """Names of a local shard's first ``limit`` members (headers only), or None if it is damaged before."""
    try:
        with tarfile.open(path, "r:") as tar:
            names = []
            for member in tar:
                names.append(member.name)
                if len(names) >= limit:
                    return names
            end = tar.offset
        with open(path, "rb") as f:
            f.seek(end)
            tail = f.read()
        return names if len(tail) >= _END_OF_ARCHIVE and not any(tail) else None
    except (tarfile.TarError, OSError):
        return None


@lru_cache(maxsize=64)
def _sizes(folder: str) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in json.loads((Path(folder) / "sizes.json").read_text()).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def listed_size(url: str) -> int | None:
    """The sample count ``sizes.json`` next to a local shard lists for it, if any."""
    return _sizes(os.path.dirname(os.path.abspath(url))).get(os.path.basename(url)) if is_local(url) else None


def _local_files(path: str) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of a local tar file; raises CorruptShardError where it stops being readable."""
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise CorruptShardError(f"member {member.name} cut short")
                yield member.name, data
            end = tar.offset
    except (tarfile.TarError, EOFError) as e:
        raise CorruptShardError(str(e) or type(e).__name__) from e
    with open(path, "rb") as f:  # tarfile stops silently at a bad header: the rest must be zero blocks
        f.seek(end)
        tail = f.read()
    if any(tail):
        raise CorruptShardError(f"{len(tail):,} unreadable bytes after byte {end:,}")
    if len(tail) < _END_OF_ARCHIVE:
        raise CorruptShardError(f"no end-of-archive marker after byte {end:,} (cut short?)")


def _remote_files(url: str) -> Iterator[tuple[str, bytes]]:
    from webdataset.handlers import reraise_exception
    from webdataset.tariterators import tar_file_expander, url_opener

    streams = url_opener([{"url": url}], handler=reraise_exception)
    for sample in tar_file_expander(streams, handler=reraise_exception):
        yield sample["fname"], sample["data"]


def _split(name: str) -> tuple[str, str]:
    base = os.path.basename(name)
    dot = base.find(".")
    if dot < 0:
        return name, ""
    return os.path.join(os.path.dirname(name), base[:dot]), base[dot + 1 :].lower()


def _samples_of(url: str, report: ShardReport) -> Iterator[dict[str, Any]]:
    files = _local_files(url) if is_local(url) else _remote_files(url)
    current: dict[str, Any] | None = None
    try:
        for name, data in files:
            key, ext = _split(name)
            if current is not None and (key != current["__key__"] or ext in current):
                yield from _checked(current, report)
                current = None
            if current is None:
                current = {"__key__": key, "__url__": url}
            current[ext] = data
            report.members.add("." + ext if ext else "(no extension)")
    except (CorruptShardError, OSError, tarfile.TarError):
        if current is not None and _complete(current):  # the last whole sample before the damage
            yield from _checked(current, report)
        raise
    if current is not None:
        yield from _checked(current, report)


def _complete(sample: dict[str, Any]) -> bool:
    return "txt" in sample and any(ext in sample for ext in _IMAGE_EXTS)


def _checked(sample: dict[str, Any], report: ShardReport) -> Iterator[dict[str, Any]]:
    if not _complete(sample):
        report.incomplete += 1
    elif not sample["txt"].decode("utf-8", "replace").strip():
        report.blank += 1
    else:
        report.samples += 1
        yield sample


@dataclass
class PassRules:
    """What one pass over a worker's shards must yield: at least one batch."""

    batch_size: int
    where: Callable[[], str] = lambda: "this worker"
    # with --dataset-resampled a pass never ends: give up after this many shards in a row without a sample
    max_barren_run: int | None = None


def shard_samples(
    src: Iterable[dict[str, Any]], handler: Callable[[BaseException], bool], rules: PassRules
) -> Iterator[dict[str, Any]]:
    """Samples of the shards in ``src`` (one pass of one worker), each shard accounted for.

    Args:
        src: shard dicts with a ``url`` (webdataset's shard list stage).
        handler: the loader's error handler (True: warn and go on); called for every unreadable shard.
        rules: the pass's minimum (one batch).

    Raises:
        DataError: when the pass ends having read no sample, or fewer than one batch.
    """
    reports: list[ShardReport] = []
    for shard in src:
        url = shard["url"]
        report = ShardReport(url, expected=listed_size(url))
        reports.append(report)
        try:
            yield from _samples_of(url, report)
        except (CorruptShardError, OSError, tarfile.TarError, ValueError) as e:
            report.error = str(e) or type(e).__name__
            if not handler(e):
                raise
        message = report.warning()
        if message:
            _logger.warning(message)
        barren = reports[-rules.max_barren_run :] if rules.max_barren_run else []
        if len(barren) == rules.max_barren_run and not any(r.samples for r in barren):
            raise DataError(
                f"{len(barren)} shards in a row gave {rules.where()} no usable sample (e.g. {barren[-1].url}: "
                f"{barren[-1].error or barren[-1].found()}): the resampled data is unreadable"
            )
    total = sum(r.samples for r in reports)
    if not reports:
        raise DataError(
            f"no shard reached {rules.where()}: there are more data workers (--workers x processes) than "
            "shards; use fewer --workers or more shards"
        )
    if total == 0:
        readable = [r for r in reports if r.error is None]
        shown = "; ".join(f"{r.url} ({r.error or r.found()})" for r in reports[:4])
        more = f" (+{len(reports) - 4} more)" if len(reports) > 4 else ""
        raise DataError(
            f"{len(readable)} of {len(reports)} shards readable in {rules.where()}: {shown}{more}"
        )
    if total < rules.batch_size:
        raise DataError(
            f"{rules.where()} read {total} usable samples from its {len(reports)} shard(s) in a full pass, "
            f"fewer than one batch (--batch-size {rules.batch_size}), and would wait forever for a batch: "
            "use a smaller --batch-size, fewer --workers, or more data"
        )
