"""Where jobs read and write: local paths and storage URIs, through ``pyarrow.fs``.

Every path a job takes (inputs, outputs, corpora, caches, models, Ray's storage) may be a local
path, ``file://…`` or any URI :meth:`pyarrow.fs.FileSystem.from_uri` resolves (``s3://``,
``gs://``, …). Endpoints and credentials come from the standard environment of the process that
opens the URI (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``GOOGLE_APPLICATION_CREDENTIALS``,
…): raglign never reads, logs or forwards them, so on a cluster every node needs them (as Ray
Train's own ``storage_path`` does). Data is streamed through the filesystem, never staged on
local disk; only models, which ``from_pretrained``/``save_pretrained`` need as local files,
are downloaded (:func:`local_copy`) or uploaded (:func:`upload_dir`).

Atomic writes (:func:`write_bytes`): a local file is written under a temporary name and
renamed; an object store has no rename, but an object becomes visible only once its upload is
complete, so the complete bytes are sent in one stream under the final key. Either way a reader
sees the old content or the new, and a writer killed midway leaves nothing under the final name.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from raglign.errors import MissingInputError, StorageError


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URI with a scheme other than ``file`` (``s3://…``, ``gs://…``)."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def _split(uri: str) -> tuple[str, str]:
    """``(path, ?query)`` of a URI (the query carries options such as ``endpoint_override``)."""
    base, sep, query = uri.partition("?")
    return base, sep + query


def local_path(path: str | os.PathLike) -> str:
    """The local path of a local path or ``file://`` URI."""
    s = str(path)
    return s[len("file://"):] if s.startswith("file://") else s


@functools.lru_cache(maxsize=32)
def _filesystem(root: str) -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(root)[0]


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path within it; one filesystem per bucket and options (a new S3
    client per call would redo its credential lookup each time)."""
    s = str(path)
    if not is_remote(s):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(s))
    base, query = _split(s)
    parts = urlsplit(base)
    try:
        fs = _filesystem(f"{parts.scheme}://{parts.netloc}{query}")
    except (OSError, ValueError) as e:
        raise StorageError(s, None, None, f"cannot open this storage URI: {e}") from None
    return fs, f"{parts.netloc}{parts.path}".rstrip("/")


def join(base: str | os.PathLike, *parts: str) -> str:
    """``base/part/...`` for a path or a URI (a URI's ``?options`` stay at the end)."""
    s = str(base)
    if not is_remote(s):
        return str(Path(local_path(s), *parts))
    path, query = _split(s)
    return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)]) + query


def to_uri(fs_path: str, like: str | os.PathLike) -> str:
    """A path within the filesystem of ``like`` (what Ray reports for a checkpoint on
    ``s3://``: ``bucket/key``, no scheme) as a URI readers can open: ``like``'s scheme and
    ``?options`` around it; a local path unchanged."""
    s = str(like)
    if not is_remote(s):
        return fs_path
    base, query = _split(s)
    return f"{urlsplit(base).scheme}://{fs_path.lstrip('/')}{query}"


def name(path: str | os.PathLike) -> str:
    """The last component of a path or URI."""
    return _split(str(path))[0].rstrip("/").rsplit("/", 1)[-1]


def with_suffix(path: str | os.PathLike, suffix: str) -> str:
    """``path`` with its extension replaced by ``suffix`` (``x.json`` -> ``x.rows.parquet``);
    a URI's ``?options`` stay at the end (and their dots are not taken for an extension)."""
    base, query = _split(str(path))
    return os.path.splitext(base)[0] + suffix + query


def parent(path: str | os.PathLike) -> str:
    s = str(path)
    if not is_remote(s):
        return str(Path(local_path(s)).parent)
    base, query = _split(s)
    return base.rstrip("/").rsplit("/", 1)[0] + query


def _error(uri: str, action: str, e: Exception) -> StorageError:
    return StorageError(uri, None, None, f"cannot {action}: {e}")


def info(path: str | os.PathLike) -> pafs.FileInfo:
    fs, p = resolve(path)
    try:
        return fs.get_file_info(p)
    except OSError as e:
        raise _error(str(path), "read its metadata", e) from None


def exists(path: str | os.PathLike) -> bool:
    """A file, or a directory / prefix holding at least one object."""
    i = info(path)
    if i.type == pafs.FileType.File:
        return True
    if i.type == pafs.FileType.Directory:
        return not is_remote(path) or bool(list_files(path, hidden=True))
    return False


def is_file(path: str | os.PathLike) -> bool:
    return info(path).type == pafs.FileType.File


def list_files(root: str | os.PathLike, suffixes: tuple[str, ...] = (),
               hidden: bool = False) -> list[str]:
    """Files under ``root`` (recursively, sorted) as paths or URIs like ``root``; those ending
    in one of ``suffixes`` when given. Unless ``hidden``, names starting with ``.`` or ``_``
    below ``root`` (staging areas, commit records, a job's own bookkeeping) are left out."""
    fs, p = resolve(root)
    try:
        found = fs.get_file_info(pafs.FileSelector(p, recursive=True, allow_not_found=True))
    except OSError as e:
        raise _error(str(root), "list it", e) from None
    s = str(root)
    out = []
    for f in found:
        if f.type != pafs.FileType.File or (suffixes and not f.path.endswith(suffixes)):
            continue
        rel = f.path[len(p):].lstrip("/")
        if not hidden and any(c.startswith((".", "_")) for c in rel.split("/")):
            continue
        out.append(join(s, rel) if is_remote(s) else os.path.join(local_path(s), rel))
    return sorted(out)


def relative(path: str, root: str) -> str:
    """``path`` relative to ``root`` (both as :func:`list_files` spells them)."""
    p, r = _split(path)[0], _split(root)[0].rstrip("/")
    if not is_remote(path):
        return os.path.relpath(local_path(p), local_path(r))
    return p[len(r):].lstrip("/")


def open_input(path: str | os.PathLike):
    """A seekable input file (Parquet footers, ``np.load``)."""
    fs, p = resolve(path)
    try:
        return fs.open_input_file(p)
    except FileNotFoundError:
        raise MissingInputError(str(path), None, None, "no such file") from None
    except OSError as e:
        raise _error(str(path), "open it", e) from None


def read_bytes(path: str | os.PathLike) -> bytes:
    with open_input(path) as f:
        return f.read()


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(read_text(path))


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` atomically (module docstring): a temporary file renamed into place
    locally; one complete upload under the final key on an object store."""
    s = str(path)
    fs, p = resolve(s)
    if not is_remote(s):
        Path(p).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(p).with_name(f".{Path(p).name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, p)
        return s
    try:
        with fs.open_output_stream(p) as out:
            out.write(data)
    except OSError as e:
        raise _error(s, "write it", e) from None
    return s


def write_text(path: str | os.PathLike, text: str) -> str:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> str:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def delete(path: str | os.PathLike) -> None:
    """Remove a file if it is there."""
    fs, p = resolve(path)
    try:
        fs.delete_file(p)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise _error(str(path), "delete it", e) from None


def delete_dir(path: str | os.PathLike) -> None:
    """Remove a directory / prefix and everything under it, if it is there."""
    fs, p = resolve(path)
    if info(path).type == pafs.FileType.NotFound:
        return
    try:
        fs.delete_dir(p)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise _error(str(path), "delete it", e) from None


def move(src: str, dst: str) -> None:
    """Rename a file (a rename locally; a server-side copy and a delete on an object store, so
    not atomic there: callers commit with a record written after it)."""
    fs, s = resolve(src)
    _, d = resolve(dst)
    if not is_remote(dst):
        Path(d).parent.mkdir(parents=True, exist_ok=True)
    try:
        fs.move(s, d)
    except OSError as e:
        raise _error(src, f"move it to {dst}", e) from None


def makedirs(path: str | os.PathLike) -> None:
    """Create a local directory; object stores have no directories to create."""
    if not is_remote(path):
        Path(local_path(path)).mkdir(parents=True, exist_ok=True)


def upload_dir(local: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a local directory's files to ``dst`` (``pyarrow.fs.copy_files``)."""
    fs, d = resolve(dst)
    try:
        pafs.copy_files(str(local), d, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
    except OSError as e:
        raise _error(str(dst), f"upload {local} to it", e) from None


def download_dir(src: str | os.PathLike, local: str | os.PathLike) -> None:
    """Copy the files under ``src`` into the local directory ``local`` (created, with its
    sub-directories: ``copy_files`` does not create local parents)."""
    fs, _ = resolve(src)
    for f in list_files(src, hidden=True):
        target = Path(local, relative(f, str(src)))
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            pafs.copy_files(resolve(f)[1], str(target), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
        except OSError as e:
            raise _error(f, f"download it to {target}", e) from None


def cache_root() -> Path:
    """Where :func:`local_copy` keeps downloads: ``$RAGLIGN_STORAGE_CACHE``, else
    ``$RAGLIGN_CACHE/storage`` (beside the converted models)."""
    if os.environ.get("RAGLIGN_STORAGE_CACHE"):
        return Path(os.environ["RAGLIGN_STORAGE_CACHE"])
    return Path(os.environ.get("RAGLIGN_CACHE", Path.home() / ".cache" / "raglign")) / "storage"


def local_copy(path: str | os.PathLike) -> str:
    """A local directory with the files of ``path``: ``path`` itself when local, else a copy
    downloaded once into ``cache_root()/<hash of the URI and its files>``.

    Why a download: Hugging Face's ``from_pretrained`` (transformers, sentence-transformers,
    tokenizers) opens local files by name and cannot read through a pyarrow filesystem. The
    cache key includes every file's size and modification time, so a model re-exported under
    the same URI is downloaded again rather than served stale; the copy is renamed into place
    only when complete, so a killed download is never mistaken for a model.
    """
    s = str(path)
    if not is_remote(s):
        return local_path(s)
    files = list_files(s, hidden=True)
    if not files:
        raise MissingInputError(s, None, None, "no such model directory (no objects under it)")
    fs, _ = resolve(s)
    stamp = [(relative(f, s), i.size, i.mtime_ns) for f, i in
             zip(files, fs.get_file_info([resolve(f)[1] for f in files]))]
    key = hashlib.sha256(json.dumps([s, stamp]).encode()).hexdigest()[:20]
    target = cache_root() / key
    if target.is_dir():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{key}.{uuid.uuid4().hex}")
    download_dir(s, tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished the same download first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def check_output(path: str | os.PathLike) -> None:
    """Fail now, naming ``path``, when a job could not write there: a local path that is a
    file, or a bucket that is missing, forbidden or unreachable (checked with one request on
    the bucket, before any work starts, rather than after the first shard)."""
    s = str(path)
    if not is_remote(s):
        if Path(local_path(s)).is_file():
            raise StorageError(s, None, None, "output path exists and is not a directory")
        return
    fs, p = resolve(s)
    bucket = p.split("/", 1)[0]
    try:
        kind = fs.get_file_info(bucket).type
    except OSError as e:
        raise _error(s, "access its bucket", e) from None
    if kind == pafs.FileType.NotFound:
        raise StorageError(s, None, None, f"bucket {bucket!r} does not exist (or this "
                           "process's credentials cannot see it)")
    if info(s).type == pafs.FileType.File:
        raise StorageError(s, None, None, "output path exists and is not a directory")
