"""Storage roots through fsspec: a local folder by default, an object store (s3://,
gs://, ...) or http when configured, so no step assumes that every worker shares one
local disk.

Steps work on local files (PyAV, OpenCV and Tesseract need them): inputs are staged in
with :meth:`Storage.local_copy`, outputs are written into a local staging folder and
published with :meth:`Storage.publish_dir`, which replaces a folder as a whole so a
reader never sees a half-written partition and re-publishing one partition touches no
other.

Raw inputs come from a folder walked (a :class:`Storage` root) or from a list of paths
and URLs (:class:`FileList`: a `.txt` file with one per line, or a `.csv` with a `path`
column such as an Open-Sora table), each entry read through its own fsspec filesystem:
local files, s3-compatible stores, http(s). :func:`open_source` picks one by the name.

Object stores need their fsspec package (`s3://`: the `s3` extra, s3fs) and their
settings: credentials and endpoint from the store's usual environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` for an s3-compatible server such as MinIO),
from fsspec's per-protocol configuration (`FSSPEC_S3='{"endpoint_url": "http://..."}'`
or :func:`set_protocol_options`, which the CLI's `--storage-option s3.endpoint_url=...`
calls), or as `storage_options` of one root.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import email.utils
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from opensora_core.utils.atomic import atomic_path, publish_mode, sweep_leftovers
from opensora_core.utils.folder_lock import FolderLock

# Written last into every published step folder; its presence means the folder is complete.
MANIFEST = "manifest.json"
# An input named with one of these suffixes is a list of raw files, not a folder.
LIST_SUFFIXES = (".txt", ".csv")
# Storage options that are secrets or names: never read as JSON numbers or booleans.
CREDENTIAL_OPTIONS = {"key", "secret", "token", "password", "username", "profile", "access_key", "secret_key"}
# The project's extra that installs a protocol's fsspec package.
EXTRAS = {"s3": "s3", "s3a": "s3"}


def file_suffix(path: str) -> str:
    """The lower-case extension of a path or URL (a URL's query and fragment aside)."""
    return PurePosixPath(urlsplit(path).path if "://" in path else path).suffix.lower()


def modified_time(info: dict) -> float:
    """Modification time (seconds) from an fsspec `info`, 0 where the store gives none:
    local `mtime`, s3 `LastModified` (a datetime), gcs `updated`, http `Last-Modified`
    (a server that sends none has its files hashed every time)."""
    for name in ("mtime", "LastModified", "Last-Modified", "updated", "last_modified"):
        value = info.get(name)
        if isinstance(value, datetime.datetime):
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.datetime.fromisoformat(value).timestamp()
            with contextlib.suppress(TypeError, ValueError):
                return email.utils.parsedate_to_datetime(value).timestamp()  # RFC 9110 dates
        elif value:
            with contextlib.suppress(TypeError, ValueError):
                return float(value)
    return 0.0


@contextlib.contextmanager
def _download(fs, path: str, suffix: str) -> Iterator[Path]:
    """`path` of `fs` as a temporary local file (named with `suffix`, which PyAV reads),
    with a byte progress bar on a terminal (a large video over http takes a while)."""
    from fsspec.callbacks import TqdmCallback

    progress = TqdmCallback(tqdm_kwargs={"desc": f"fetching {PurePosixPath(path).name}", "unit": "B",
                                         "unit_scale": True, "leave": False, "disable": None})
    with tempfile.TemporaryDirectory(prefix="opensora-stage-") as tmp:
        local = Path(tmp) / f"input{suffix}"
        fs.get_file(path, str(local), callback=progress)
        yield local


def filesystem(url: str, **storage_options):
    """(fsspec filesystem, path) of `url` (a local path when it has no scheme); a
    protocol whose package is not installed is a ValueError naming the package and the
    extra that installs it."""
    if not _has_scheme(url):  # a local path, even one with "::" (fsspec's chaining) in a name
        return LocalFileSystem(**storage_options), LocalFileSystem._strip_protocol(url)
    try:
        return fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as err:
        protocol = url.split("://", 1)[0]
        extra = f" (pip install 'opensora-mlops[{EXTRAS[protocol]}]')" if protocol in EXTRAS else ""
        raise ValueError(f"{url}: {err}{extra}") from None


def _shown(setting: str) -> str:
    """A malformed setting as it may be printed: cut at its first `=` or `:` (where a
    value would start) when it names a credential, so a secret is never echoed."""
    lowered = setting.lower()
    if any(word in lowered for word in CREDENTIAL_OPTIONS):
        cut = min((i for i in (setting.find("="), setting.find(":")) if i >= 0), default=len(setting))
        return setting[:cut] + ("=<hidden>" if cut < len(setting) else "")
    return setting


def set_protocol_options(settings: list[str]) -> dict[str, dict]:
    """Apply `PROTOCOL.KEY=VALUE` settings (`s3.endpoint_url=http://127.0.0.1:9000`) to
    every filesystem of that protocol this process opens, as fsspec's `FSSPEC_<PROTOCOL>`
    variables do. A VALUE that parses as JSON is that value (`s3.anon=true`,
    `s3.client_kwargs={"region_name": "eu-west-1"}`, `s3.default_block_size=5242880`),
    else the text; credentials (`key`, `secret`, `token`, `password`) are text unless they
    open with `{` or `[`, and such a VALUE must be valid JSON. Returns what was set."""
    import json

    applied: dict[str, dict] = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        protocol, dot, key = name.strip().partition(".")
        if not sep or not dot or not protocol or not key:
            raise ValueError(f"storage option {_shown(setting)!r}: expected PROTOCOL.KEY=VALUE, e.g. "
                             "s3.endpoint_url=http://127.0.0.1:9000")
        parsed: object = value
        structured = value.lstrip().startswith(("{", "["))  # e.g. a service account's JSON as gs.token
        if structured or key not in CREDENTIAL_OPTIONS:
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as err:
                if structured:
                    shown = "the value" if key in CREDENTIAL_OPTIONS else repr(value)
                    raise ValueError(f"storage option {name}: {shown} is not valid JSON ({err.msg} at "
                                     f"character {err.pos})") from None
        applied.setdefault(protocol, {})[key] = parsed
    for protocol, options in applied.items():
        fsspec.config.conf.setdefault(protocol, {}).update(options)
    return applied


class Storage:
    """A root URL (or local path) plus fsspec options; paths below it are POSIX strings."""

    def __init__(self, root: str | os.PathLike[str], **storage_options) -> None:
        root = str(root)
        self.fs, path = filesystem(root, **storage_options)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = str(Path(path).resolve()) if self.is_local else path.rstrip("/")
        self.url = self.root if self.is_local else root.rstrip("/")

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def path(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    def local_path(self, *parts: str) -> Path:
        """The local file for `parts`; only for local roots."""
        if not self.is_local:
            raise ValueError(f"{self.url} is not a local folder")
        return Path(self.root, *parts)

    def url_of(self, rel: str) -> str:
        """Where the raw file `rel` is, as users see it (path or URL)."""
        return self.path(rel) if self.is_local else f"{self.url}/{rel}"

    def missing(self) -> str | None:
        """Why this root cannot be read as a folder of raw files, or None."""
        return None if self.fs.isdir(self.root) else f"{self.url}: no such folder"

    def info(self, rel: str) -> tuple[int, float]:
        """(size in bytes, modification time) of `rel`."""
        info = self.fs.info(self.path(rel))
        return int(info.get("size") or 0), modified_time(info)

    def open(self, rel: str):
        return self.fs.open(self.path(rel), "rb")

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.path(*parts))

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode("utf-8")

    def write_bytes(self, data: bytes, *parts: str) -> None:
        if self.is_local:
            with atomic_path(self.local_path(*parts)) as tmp:
                tmp.write_bytes(data)
        else:  # an object store replaces an object as a whole
            self.fs.pipe_file(self.path(*parts), data)

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode("utf-8"), *parts)

    def listdir(self, *parts: str) -> list[str]:
        """Names directly under `parts` (empty when it does not exist)."""
        target = self.path(*parts)
        if not self.fs.exists(target):
            return []
        return sorted(PurePosixPath(p).name for p in self.fs.ls(target, detail=False))

    @contextlib.contextmanager
    def local_copy(self, *parts: str) -> Iterator[Path]:
        """A local file with the content of `parts`: the file itself on a local root,
        a temporary download otherwise."""
        if self.is_local:
            yield self.local_path(*parts)
            return
        with _download(self.fs, self.path(*parts), PurePosixPath(parts[-1]).suffix) as local:
            yield local

    @contextlib.contextmanager
    def staging_dir(self, *parts: str) -> Iterator[Path]:
        """A fresh local folder to write a step's outputs into; published over `parts` on
        success, discarded on error.

        On a local root the step holds the lock of the folder above `parts` (a
        partition's folder) throughout, so two runs of one partition never publish over
        each other, and it first sweeps what killed runs left there."""
        if not self.is_local:
            tmp = Path(tempfile.mkdtemp(prefix="opensora-out-"))
            try:
                yield tmp
                self.publish_dir(tmp, *parts)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return
        final = self.local_path(*parts)
        with FolderLock(final.parent, f"curation: writing {'/'.join(parts)}"):
            sweep_leftovers(final.parent)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
            publish_mode(tmp)  # mkdtemp's 0700 would survive the publishing rename
            try:
                yield tmp
                self.publish_dir(tmp, *parts)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def publish_dir(self, local: Path, *parts: str) -> None:
        """Replace the folder `parts` with the content of `local`."""
        if self.is_local:
            final = self.local_path(*parts)
            final.parent.mkdir(parents=True, exist_ok=True)
            staged = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.new"
            shutil.move(str(local), staged) if local.parent != final.parent else os.replace(local, staged)
            old = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.old"
            # Two renames: a reader sees the old folder or the new one, never a mixture.
            if final.exists():
                os.replace(final, old)
            os.replace(staged, final)
            shutil.rmtree(old, ignore_errors=True)
            local.mkdir(exist_ok=True)  # the staging context removes it again
            return
        target = self.path(*parts)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        # The step's manifest goes last: readers take a folder without one as unfinished.
        files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: (p.name == MANIFEST, str(p)))
        for file in files:
            self.fs.put_file(str(file), self.path(*parts, *file.relative_to(local).parts))


def _has_scheme(entry: str) -> bool:
    return "://" in entry or entry.startswith(("memory:", "file:"))


class FileList:
    """Raw files named one by one, instead of a folder walked: `url` is a list file, a
    `.txt` with one path or URL per line (blank lines and `#` comments skipped) or a
    `.csv` with a `path` column (an Open-Sora table; other columns are ignored).

    Entries are local paths (relative ones from the list's folder) or URLs of any
    fsspec filesystem (s3://, gs://, http(s)://, ...); `storage_options` (credentials,
    endpoint) apply to the entries with the list's own protocol, the others take their
    filesystem's defaults (environment, fsspec config). An entry listed twice counts
    once. Each entry is named by its absolute path or URL (`rel` below), which is what
    the pipeline records as its path; an entry that cannot be read is not dropped
    here: the ingest step records it as rejected with the reason.
    """

    def __init__(self, url: str | os.PathLike[str], **storage_options) -> None:
        url = str(url)
        self.storage_options = storage_options
        fs, path = filesystem(url, **storage_options)
        self.is_local = isinstance(fs, LocalFileSystem)
        self.url = self.root = str(Path(path).resolve()) if self.is_local else url
        self.protocol = url.split("://", 1)[0] if "://" in url else "file"
        try:
            text = fs.cat_file(path).decode("utf-8-sig")
        except FileNotFoundError:
            raise FileNotFoundError(f"{url}: no such list of raw files") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"{url}: a list of raw files must be UTF-8 text ({err})") from None
        names = self._parse(text, file_suffix(url))
        base = str(Path(self.url).parent) if self.is_local else self.url.rsplit("/", 1)[0]
        entries = [self._resolve(name, base) for name in names]
        self.entries = list(dict.fromkeys(entries))
        self.duplicates = len(entries) - len(self.entries)

    def __repr__(self) -> str:
        return f"FileList({self.url!r}, {len(self.entries)} entries)"

    def _parse(self, text: str, suffix: str) -> list[str]:
        if suffix == ".csv":
            reader = csv.DictReader(io.StringIO(text))
            if "path" not in (reader.fieldnames or []):
                raise ValueError(f"{self.url}: a CSV list of raw files needs a 'path' column "
                                 f"(found: {', '.join(reader.fieldnames or []) or 'no header'})")
            return [row["path"].strip() for row in reader if (row["path"] or "").strip()]
        lines = (line.strip() for line in text.splitlines())
        return [line for line in lines if line and not line.startswith("#")]

    def _resolve(self, name: str, base: str) -> str:
        if _has_scheme(name):
            return name
        name = os.path.expanduser(name)
        if os.path.isabs(name):
            return str(Path(name).resolve())
        return str(Path(base, name).resolve()) if self.is_local else f"{base}/{name}"

    def missing(self) -> str | None:
        return None  # a list that could not be read raised when it was opened

    def _fs(self, rel: str):
        scheme = rel.split("://", 1)[0] if "://" in rel else "file"
        options = self.storage_options if scheme == self.protocol else {}
        return filesystem(rel, **options)

    def path(self, rel: str) -> str:
        return rel

    def url_of(self, rel: str) -> str:
        return rel

    def info(self, rel: str) -> tuple[int, float]:
        fs, path = self._fs(rel)
        info = fs.info(path)
        if info.get("type") == "directory":
            raise IsADirectoryError(f"{rel} is a folder")
        return int(info.get("size") or 0), modified_time(info)

    def open(self, rel: str):
        fs, path = self._fs(rel)
        return fs.open(path, "rb")

    def exists(self, rel: str) -> bool:
        fs, path = self._fs(rel)
        try:
            return bool(fs.exists(path))
        except OSError:  # an unreachable host: nothing there as far as the pipeline can tell
            return False

    def read_text(self, rel: str) -> str:
        fs, path = self._fs(rel)
        return fs.cat_file(path).decode("utf-8")

    @contextlib.contextmanager
    def local_copy(self, rel: str) -> Iterator[Path]:
        fs, path = self._fs(rel)
        if isinstance(fs, LocalFileSystem):
            yield Path(path)
            return
        with _download(fs, path, file_suffix(rel)) as local:
            yield local


def open_source(spec: str | os.PathLike[str], **storage_options) -> Storage | FileList:
    """The raw inputs `spec` names: a list of files (:data:`LIST_SUFFIXES`) or a folder."""
    if file_suffix(str(spec)) in LIST_SUFFIXES:
        return FileList(spec, **storage_options)
    return Storage(spec, **storage_options)
