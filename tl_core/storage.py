"""Where data lives: a local path or a URI, behind one small interface.

A location is a string: a local path (`data/cats`), or a URI that `pyarrow.fs.FileSystem.from_uri`
resolves (`s3://bucket/prefix`; `gs://` and others through the same code, only S3 is tested).
Local paths keep the operating system's calls and guarantees (symbolic links followed, loops found);
URIs go through pyarrow's file systems, which take credentials and endpoints from the standard
configuration (for S3: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_REGION,
AWS_PROFILE and ~/.aws/config, AWS_ENDPOINT_URL for S3-compatible stores). Credentials are never
part of a location: a URI that carries them is refused, so no log line, error or config.json can
show one. Every other module asks this one; none looks at a location's scheme itself.
"""
import contextlib
import dataclasses
import datetime
import email.utils
import errno
import functools
import gc
import hashlib
import io
import os
import stat
import tempfile
import threading
import time
import urllib.parse
import weakref
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.fs as pafs

BLOCK = 1 << 16  # bytes fetched per read from object storage: an image header is read in one request


class StorageError(OSError):
    """A location that cannot be used (bad URI, missing bucket, unreachable store), said in one line."""

    def __init__(self, message: str):
        super().__init__(errno.EIO, message)

    def __str__(self):
        return self.strerror


def is_uri(location) -> bool:
    """A location with a scheme (s3://...), as opposed to a local path."""
    scheme = urllib.parse.urlsplit(str(location)).scheme
    return len(scheme) > 1 and "://" in str(location)  # "C:\\data" is a local path


def _parts(uri: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(uri)
    if parts.username or parts.password:
        raise StorageError(f"{parts.scheme}://{parts.hostname}{parts.path}: credentials do not belong in a URI; "
                           "set them in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or ~/.aws/")
    if parts.query or parts.fragment:
        raise StorageError(f"{parts.scheme}://{parts.netloc}{parts.path}: a location takes no ?query or #fragment "
                           "(not repeated here: it may hold a key); the store's settings come from the environment "
                           "(AWS_REGION, AWS_ENDPOINT_URL, AWS_PROFILE)")
    if not parts.netloc:
        raise StorageError(f"{uri}: no bucket; write {parts.scheme}://<bucket>/<prefix>")
    return parts


# The settings a file system is made from: one file system per store and configuration, reused.
_ENVIRONMENT = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
                "AWS_ACCESS_KEY_ID", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


@functools.lru_cache(maxsize=16)
def _filesystem(root: str, environment: tuple) -> pafs.FileSystem:
    try:
        return pafs.FileSystem.from_uri(root)[0]
    except (OSError, ValueError) as error:
        raise StorageError(f"{root}: {_reason(error)}") from None


# The threads of this process that call the store while the main thread goes on (a run's uploader): shut_down() waits
# for them before it finalises S3.
_store_threads: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()


def calls_store(thread: threading.Thread) -> threading.Thread:
    """thread (not started yet) calls the store: a command's exit waits for it, for a while (shut_down)."""
    _store_threads.add(thread)
    return thread


def shut_down(wait_seconds: float) -> bool:
    """At the end of a process, before the interpreter tears it down, in this order: abandoned readers collected
    (a tf.data iterator's threads reading objects are stopped as it goes), the threads that call the store joined (for
    at most wait_seconds in all), the file systems made here released, and pyarrow's S3 finalised (the AWS SDK shut
    down). pyarrow finalises S3 on its own at exit, but a request still running in another thread then ends the process
    with SIGSEGV or an abort instead of its exit status (apache/arrow#38352, #39503, #41087; a command that exits while a
    thread is still in a request does so here most times, tests/test_object_storage.py).

    False when a thread that calls the store is still running after wait_seconds: S3 is then left as it is, and the
    caller must end the process without the interpreter's teardown (os._exit). S3 cannot be used after this."""
    gc.collect()
    deadline = time.monotonic() + wait_seconds
    for thread in list(_store_threads):
        if thread.ident is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in _store_threads):
        return False
    _filesystem.cache_clear()
    gc.collect()
    if hasattr(pafs, "ensure_s3_finalized"):  # pyarrow built with S3; nothing to do where it was never used
        pafs.ensure_s3_finalized()
    return True


# Where the store is, without any secret: what Ray workers are given (Ray shows a job's runtime_env in its dashboard,
# so credentials never go through it; each node takes its own from its instance profile or environment).
STORE_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


def store_settings() -> dict:
    """The settings of STORE_SETTINGS this process has, for a Ray worker's environment."""
    return {name: os.environ[name] for name in STORE_SETTINGS if os.environ.get(name)}


def resolve(location) -> tuple[pafs.FileSystem, str]:
    """(file system, path within it) of a location: pyarrow's view, for readers that take a filesystem=."""
    location = str(location)
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(location)
    parts = _parts(location)
    filesystem = _filesystem(f"{parts.scheme}://{parts.netloc}", tuple(os.environ.get(name) for name in _ENVIRONMENT))
    return filesystem, (parts.netloc + parts.path).rstrip("/")


def ray_storage(location) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) of Ray Train's and Ray Tune's RunConfig for location: a local path on Ray's
    own file system, a URI through this module's (which carries no credential: each node takes its own)."""
    if not is_uri(location):
        return str(location), None
    filesystem, path = resolve(location)
    return path, filesystem


def absolute(location) -> str:
    """The location from anywhere: local paths made absolute (Ray workers have other working directories)."""
    location = str(location)
    return location.rstrip("/") if is_uri(location) else os.path.abspath(location)


def canonical(location) -> str:
    """One spelling per location, to compare or key by: local paths with symbolic links resolved."""
    location = str(location)
    return location.rstrip("/") if is_uri(location) else os.path.realpath(location)


def local_path(location, flag: str):
    """A location that must be on this machine's file system (the asset cache; and what a caller has staged already:
    a run directory, a registry on disk), as a Path; a URI is refused in one line that says so."""
    if is_uri(location):
        raise StorageError(f"{flag} {display(location)}: this must be on a local (or shared) disk (object storage holds "
                           f"data, runs, searches, registries, models and outputs, not this): give {flag} a local path")
    return Path(location)


def join(location, *names: str) -> str:
    location = str(location)
    if is_uri(location):
        return "/".join([location.rstrip("/"), *(name.strip("/") for name in names)])
    return os.path.join(location, *names)


def relative(location, root) -> str:
    """location's path below root (with / between names)."""
    if is_uri(root):
        return str(location)[len(str(root).rstrip("/")) + 1:]
    return os.path.relpath(location, root).replace(os.sep, "/")


def name(location) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1] if is_uri(location) else os.path.basename(location)


def parent(location) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[0] if is_uri(location) else os.path.dirname(location)


def display(location) -> str:
    """A location that prints on any terminal: undecodable bytes of non-UTF-8 names shown as \\xNN."""
    return str(location).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _reason(error: BaseException) -> str:
    """pyarrow's message for an S3 failure, cut to what a user acts on."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "NETWORK_CONNECTION" in text or "Could not connect" in text or "Couldn't connect" in text:
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or "the store"
        return f"cannot connect to {endpoint}: check AWS_ENDPOINT_URL and that the store is running"
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
        return "the bucket does not exist: create it, or check the name"
    if "ACCESS_DENIED" in text or "AccessDenied" in text:
        return "access denied: check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE) and the bucket's policy"
    if any(code in text for code in ("INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "No credentials")):
        return "the store refused the credentials: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
    return text


def _info(location) -> pafs.FileInfo:
    filesystem, path = resolve(location)
    try:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound and is_uri(location) and "/" in path:
            bucket = filesystem.get_file_info(path.split("/", 1)[0])  # a missing bucket is said as such
            if bucket.type == pafs.FileType.NotFound:
                raise StorageError(f"{display(location)}: the bucket {path.split('/', 1)[0]!r} does not exist: "
                                   "create it, or check the name")
        return info
    except StorageError:
        raise
    except OSError as error:
        raise StorageError(f"{display(location)}: {_reason(error)}") from None


def is_dir(location) -> bool:
    """A directory, or on object storage a prefix that holds objects."""
    if not is_uri(location):
        return os.path.isdir(location)
    return _info(location).type == pafs.FileType.Directory


def is_file(location) -> bool:
    if not is_uri(location):
        return os.path.isfile(location)
    return _info(location).type == pafs.FileType.File


def size(location) -> int:
    """Bytes in the file at location."""
    if not is_uri(location):
        return os.path.getsize(location)
    return _info(location).size


def exists(location) -> bool:
    if not is_uri(location):
        return os.path.exists(location)
    return _info(location).type != pafs.FileType.NotFound


def list_dirs(location) -> list[str]:
    """Names of the sub-directories of location (symbolic links followed), sorted, hidden ones left out."""
    if not is_uri(location):
        return sorted(entry.name for entry in os.scandir(location) if entry.is_dir() and not entry.name.startswith("."))
    filesystem, path = resolve(location)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path))
    except OSError as error:
        raise StorageError(f"cannot list {display(location)}: {_reason(error)}") from None
    return sorted(info.base_name for info in infos
                  if info.type == pafs.FileType.Directory and not info.base_name.startswith("."))


def files_in(location, suffix: str = "") -> list[str]:
    """The files directly in a directory whose names end with suffix, sorted, hidden ones left out ([] for none)."""
    if not is_uri(location):
        if not os.path.isdir(location):
            return []
        return sorted(entry.path for entry in os.scandir(location)
                      if entry.name.endswith(suffix) and not entry.name.startswith(".") and entry.is_file())
    filesystem, path = resolve(location)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as error:
        raise StorageError(f"cannot list {display(location)}: {_reason(error)}") from None
    return sorted(join(location, info.base_name) for info in infos if info.type == pafs.FileType.File
                  and info.base_name.endswith(suffix) and not info.base_name.startswith("."))


@dataclasses.dataclass
class Listing:
    """The regular files under a directory, sorted, and what the walk passed over or could not use."""

    paths: list[str]
    stats: np.ndarray  # int64 [n, 2]: (size, mtime_ns) of each file: what "unchanged" is decided by
    problems: list[tuple[str, str]]  # (location, reason): loops, broken links, unreadable folders
    ignored: list[str]  # files and folders ignore_file / hidden folders passed over


def walk(location, ignore_file=lambda name: False) -> Listing:
    """Every regular file under location, recursively: names for which ignore_file is true and hidden folders are
    ignored (and listed). Local symbolic links are followed; loops and broken links become problems."""
    return (_walk_uri if is_uri(location) else _walk_local)(str(location), ignore_file)


def _walk_uri(location: str, ignore_file) -> Listing:
    filesystem, root = resolve(location)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    except OSError as error:
        raise StorageError(f"cannot list {display(location)}: {_reason(error)}") from None
    paths, sizes, mtimes, ignored = [], [], [], []
    prefix = location.rstrip("/")
    for info in infos:
        names = info.path[len(root) + 1:].split("/")
        hidden = [i for i, part in enumerate(names[:-1]) if part.startswith(".")]
        if info.type == pafs.FileType.Directory:
            if names[-1].startswith(".") and not hidden:
                ignored.append(f"{prefix}/{'/'.join(names)}")
        elif info.type == pafs.FileType.File and not hidden:
            if ignore_file(names[-1]):
                ignored.append(f"{prefix}/{'/'.join(names)}")
            else:
                paths.append(f"{prefix}/{'/'.join(names)}")
                sizes.append(info.size)
                mtimes.append(info.mtime_ns or 0)
    order = sorted(range(len(paths)), key=paths.__getitem__)
    stats = np.array([sizes, mtimes], dtype=np.int64).T.reshape(-1, 2)[order]
    return Listing([paths[i] for i in order], stats, [], sorted(ignored))


def _walk_local(directory: str, ignore_file) -> Listing:
    paths, sizes, mtimes, problems, ignored = [], [], [], [], []

    def visit(folder: str, ancestors: dict) -> None:
        try:
            entries = os.scandir(folder)  # iterated as read: a folder of a million files is never held as entries
        except OSError as error:
            problems.append((folder, f"cannot list this folder: {error.strerror}"))
            return
        with entries:
            for entry in entries:  # once per file: kept lean, a regular file costs one stat and three appends
                if ignore_file(entry.name):
                    ignored.append(entry.path)
                    continue
                try:
                    status = entry.stat()  # follows symbolic links
                except OSError as error:
                    broken = entry.is_symlink() and error.errno == errno.ENOENT
                    problems.append((entry.path, "broken symbolic link" if broken else error.strerror))
                    continue
                if stat.S_ISREG(status.st_mode):
                    paths.append(entry.path)
                    sizes.append(status.st_size)
                    mtimes.append(status.st_mtime_ns)
                elif stat.S_ISDIR(status.st_mode):
                    visit_folder(entry, status, ancestors)
                else:
                    problems.append((entry.path, "not a regular file"))

    def visit_folder(entry: os.DirEntry, status: os.stat_result, ancestors: dict) -> None:
        key = (status.st_dev, status.st_ino)
        if entry.name.startswith("."):
            ignored.append(entry.path)
        elif key in ancestors:
            problems.append((entry.path, f"symbolic link loop: leads back to {display(ancestors[key])}"))
        else:
            visit(entry.path, {**ancestors, key: entry.path})

    root = os.stat(directory)
    visit(directory, {(root.st_dev, root.st_ino): directory})
    order = sorted(range(len(paths)), key=paths.__getitem__)
    stats = np.array([sizes, mtimes], dtype=np.int64).T.reshape(-1, 2)[order]
    return Listing([paths[i] for i in order], stats, sorted(problems), sorted(ignored))


def _read_object(location, use):
    """use(filesystem, path) on an object to read, pyarrow's errors said in one line."""
    filesystem, path = resolve(location)
    try:
        return use(filesystem, path)
    except FileNotFoundError:
        raise StorageError(f"{display(location)} does not exist") from None
    except OSError as error:
        raise _store_error("read", location, error) from None


def read_bytes(location) -> bytes:
    if not is_uri(location):
        with open(location, "rb") as file:
            return file.read()

    def read(filesystem, path):
        with filesystem.open_input_stream(path, buffer_size=None) as file:
            return file.read()

    return _read_object(location, read)


def open_input(location):
    """A seekable binary file: local files opened directly, objects read BLOCK bytes per request."""
    if not is_uri(location):
        return open(location, "rb")
    return _read_object(location, lambda filesystem, path: io.BufferedReader(filesystem.open_input_file(path), BLOCK))


def parquet_source(location):
    """What pyarrow.parquet.ParquetFile reads a location from: the path itself when local, else a seekable file."""
    if not is_uri(location):
        return str(location)
    return _read_object(location, lambda filesystem, path: filesystem.open_input_file(path))


def sha256(location) -> str:
    """The SHA-256 of a file's bytes (hex), read in blocks of 1 MiB."""
    digest = hashlib.sha256()
    with open_input(location) as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _store_error(action: str, location, error: OSError) -> StorageError:
    return StorageError(f"cannot {action} {display(location)}: {_reason(error)}")


# Writes allowed only while a lock is held (a registry's, registry/object_store.py): a location's prefix and the
# holder's check, which raises when this process may no longer write there.
_fences: dict[str, Callable[[], None]] = {}


@contextlib.contextmanager
def fenced(root, check: Callable[[], None]):
    """While the block runs, every write of this process below root (upload, replace_bytes, delete, and so
    written_locally) first calls check(): a writer that lost its lock writes nothing more. The conditional writes below
    (create_object, replace_object_if, delete_object_if: what the lock itself is made of) are not fenced."""
    prefix = absolute(root) + "/"
    _fences[prefix] = check
    try:
        yield
    finally:
        _fences.pop(prefix, None)


def _check_fence(location) -> None:
    location = absolute(location) + "/"
    for prefix, check in list(_fences.items()):
        if location.startswith(prefix):
            check()


def upload(local, location) -> None:
    """Copy a local file or directory tree to location (on object storage: one PUT per file, each whole or absent)."""
    _check_fence(location)
    filesystem, path = resolve(location)
    try:
        pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=filesystem)
    except OSError as error:
        raise _store_error("write", location, error) from None


def copy(location, destination) -> None:
    """Copy a file or directory tree to another location of the same store (on object storage: one copy per object)."""
    _check_fence(destination)
    filesystem, path = resolve(location)
    target_filesystem, target = resolve(destination)
    try:
        pafs.copy_files(path, target, source_filesystem=filesystem, destination_filesystem=target_filesystem)
    except OSError as error:
        raise _store_error("copy", location, error) from None


def plain_relative(path: str, where) -> str:
    """path, a relative path read from a store or a file (an object's key below a prefix, a pointer's directory), if
    every segment is a plain name; a StorageError, before any local path is made of it, if a '..', '.', empty or
    absolute segment (or a backslash) could make it land outside the directory it is joined to."""
    if not path or path.startswith("/") or "\\" in path or any(part in ("", ".", "..") for part in path.split("/")):
        raise StorageError(f"{display(where)}: {display(path)!r} is not a plain relative path (it has a '..', '.', empty or "
                           "absolute segment): refused, nothing is written outside its directory")
    return path


def download(location, local) -> None:
    """Copy a file or directory tree at location to a local path (its folders made as needed); a key below it that is
    not a plain relative path is refused before anything is written."""
    files = [(location, str(local))] if not is_dir(location) else [
        (path, os.path.join(str(local), *plain_relative(relative(path, location), location).split("/")))
        for path in walk(location).paths]
    for source, destination in files:
        os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
        filesystem, path = resolve(source)
        try:
            pafs.copy_files(path, destination, source_filesystem=filesystem,
                            destination_filesystem=pafs.LocalFileSystem())
        except OSError as error:
            raise _store_error("read", source, error) from None


@contextlib.contextmanager
def local_copy(location):
    """A local path to read location from: the path itself on disk; for a URI, a temporary copy (removed after)."""
    if not is_uri(location):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="tl-copy-") as tmp:
        download(location, Path(tmp) / name(location))
        yield Path(tmp) / name(location)


@contextlib.contextmanager
def staging(location, *, pull=(), prefix: str = "tl-output-"):
    """(a local directory to write location's files in, publish): the directory itself on disk (publish does nothing);
    for a URI, a staging directory, holding first the files named in `pull` that location has, whose publish() uploads
    it to location, removed at the end. (A run's own staging, uploaded epoch by epoch, is training/run_store.py's.)"""
    if not is_uri(location):
        yield Path(location), lambda: None
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        for file_name in pull:
            if exists(join(location, file_name)):
                download(join(location, file_name), Path(tmp) / file_name)
        yield Path(tmp), lambda: upload(tmp, location)


@contextlib.contextmanager
def written_locally(location):
    """A local directory to write location's files in (staging): published when the block ends without an error (a
    failed block uploads nothing)."""
    with staging(location) as (local, publish):
        yield local
        publish()


def delete(location) -> None:
    """Remove a file or a directory tree (on object storage: every object under the prefix); absent is fine."""
    _check_fence(location)
    filesystem, path = resolve(location)
    try:
        kind = filesystem.get_file_info(path).type
        if kind == pafs.FileType.Directory:
            filesystem.delete_dir(path)
        elif kind == pafs.FileType.File:
            filesystem.delete_file(path)
    except OSError as error:
        raise _store_error("delete", location, error) from None


def replace_bytes(location, data: bytes) -> None:
    """Write a small file whole: a reader sees the old content or the new, never a part (local: a temporary file
    renamed into place; object storage: one PUT)."""
    _check_fence(location)
    if not is_uri(location):
        from tl_core.artifacts import atomic_path  # artifacts loads matplotlib: storage is imported by every command

        with atomic_path(location) as tmp:
            tmp.write_bytes(data)
        return
    filesystem, path = resolve(location)
    try:
        with filesystem.open_output_stream(path) as file:
            file.write(data)
    except OSError as error:
        raise _store_error("write", location, error) from None


# Conditional writes on S3: pyarrow cannot make them, boto3 can (S3 has honoured If-None-Match / If-Match since
# 2024, as do MinIO and moto). A token is the object's ETag.

def _s3(location) -> tuple[object, str, str]:
    """(boto3 client, bucket, key) of an s3:// location; other stores have no conditional writes here."""
    parts = _parts(str(location))
    if parts.scheme != "s3":
        raise StorageError(f"{display(location)}: conditional writes (the registry's lock) are supported on s3:// only")
    import boto3  # boto3 only for conditional writes (the registry on s3://)

    return boto3.client("s3"), parts.netloc, parts.path.lstrip("/")


def _precondition_failed(error) -> bool:
    return getattr(error, "response", {}).get("Error", {}).get("Code") in ("PreconditionFailed", "412", "NoSuchKey",
                                                                           "ConditionalRequestConflict")


def create_object(location, data: bytes) -> str | None:
    """Create the object only if none exists; its token, or None when one existed already."""
    client, bucket, key = _s3(location)
    try:
        return client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")["ETag"]
    except Exception as error:
        if _precondition_failed(error):
            return None
        raise StorageError(f"cannot write {display(location)}: {_reason(error)}") from None


def replace_object_if(location, data: bytes, token: str) -> str | None:
    """Replace the object only if it is still the version `token` names; the new token, or None if it changed."""
    client, bucket, key = _s3(location)
    try:
        return client.put_object(Bucket=bucket, Key=key, Body=data, IfMatch=token)["ETag"]
    except Exception as error:
        if _precondition_failed(error):
            return None
        raise StorageError(f"cannot write {display(location)}: {_reason(error)}") from None


def read_object(location) -> tuple[bytes, str, float] | None:
    """(content, token, age) of an object, or None when there is none. age: seconds since it was last written, by the
    store's own clock (its LastModified against the Date of the same answer; whole seconds), so that no two machines'
    clocks are compared."""
    client, bucket, key = _s3(location)
    try:
        answer = client.get_object(Bucket=bucket, Key=key)
        date = answer["ResponseMetadata"].get("HTTPHeaders", {}).get("date")
        now = email.utils.parsedate_to_datetime(date) if date else datetime.datetime.now(datetime.timezone.utc)
        return answer["Body"].read(), answer["ETag"], (now - answer["LastModified"]).total_seconds()
    except Exception as error:
        if getattr(error, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise StorageError(f"cannot read {display(location)}: {_reason(error)}") from None


def object_token(location) -> str | None:
    """The token of the object's current version, or None when there is none."""
    client, bucket, key = _s3(location)
    try:
        return client.head_object(Bucket=bucket, Key=key)["ETag"]
    except Exception as error:
        if getattr(error, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise StorageError(f"cannot read {display(location)}: {_reason(error)}") from None


def delete_object_if(location, token: str) -> bool:
    """Delete the object only if it is still the version `token` names."""
    client, bucket, key = _s3(location)
    try:
        client.delete_object(Bucket=bucket, Key=key, IfMatch=token)
        return True
    except Exception as error:
        if _precondition_failed(error):
            return False
        raise StorageError(f"cannot delete {display(location)}: {_reason(error)}") from None


def tf_read_file(example_location):
    """A tf.data map function: location (tf.string) -> the file's bytes, for locations like example_location.
    Local files are read by TensorFlow itself; TensorFlow 2.21 has no object storage, so objects are read here."""
    import tensorflow as tf  # only for a tf.data pipeline: commands that read no images never load TensorFlow

    if not is_uri(example_location):
        return tf.io.read_file

    def read(location):
        data = tf.numpy_function(lambda value: read_bytes(os.fsdecode(value)), [location], tf.string, stateful=False)
        return tf.ensure_shape(data, [])

    return read
