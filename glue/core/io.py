"""The one place for file I/O every stage shares: YAML and JSONL reading with
file:line errors, atomic writes, hashing. A stage that writes its output through
these helpers never leaves a half-written file that looks finished."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml


class UserError(Exception):
    """A problem the user can fix (bad path, bad value). Printed as one line, no traceback."""


def run_cli(main: Callable[[list[str] | None], Any]) -> None:
    """Run a glue CLI entry point: UserError becomes `error: ...` and exit status 2."""
    try:
        main(None)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def require_file(path: str | Path, what: str, hint: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path} ({hint})")
    return path


def load_yaml(path: str | Path) -> Any:
    path = require_file(path, "YAML file", "check the path")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def iter_jsonl(path: str | Path, on_error: Callable[[str, str], None] | None = None,
               with_location: bool = False) -> Iterator:
    """Yield the JSON object on each non-blank line of `path` (with `with_location`, a
    (`path:line`, object) pair, for callers that report on good rows too).

    A bad line raises UserError naming `path:line`, unless `on_error` is given: then it is
    called with (location, message) and reading goes on, so a caller can count and keep
    rejects instead of stopping.
    """
    path = require_file(path, "JSONL file", "check the path")
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(raw.decode("utf-8"))
                if not isinstance(record, dict):
                    raise ValueError("expected a JSON object")
            except (UnicodeDecodeError, ValueError) as exc:
                message = f"{where}: {exc}"
                if on_error is None:
                    raise UserError(message) from None
                on_error(where, message)
                continue
            yield (where, record) if with_location else record


@contextlib.contextmanager
def atomic_path(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `target` (file or folder) to write into; on success it
    is renamed onto `target`, on failure it is removed. `target` never holds partial work."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists (remove it, or ask to overwrite)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    tmp.rmdir()  # callers create a file or a folder at this path, whichever they need
    try:
        yield tmp
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()


def write_text_atomic(target: str | Path, text: str) -> None:
    with atomic_path(target, overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_jsonl_atomic(target: str | Path, records: Iterable[dict]) -> int:
    count = 0
    with atomic_path(target, overwrite=True) as tmp:
        with tmp.open("w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
    return count


# Files at least this large have their digest remembered across processes: every stage that
# takes a model folder as input hashes it for its manifest, and on the real profile that is
# 16 GB of weights read again by each of eval, compress, calibrate, gguf and compress-report.
DIGEST_CACHE_MIN_BYTES = 16 << 20


def digest_cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "cogumi" / "sha256.sqlite"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of one file; a large file's digest is kept in `digest_cache_path()` under its
    path, inode, size and modification time, so an unchanged file is read once per machine."""
    import sqlite3

    path = Path(path).resolve()
    stat = path.stat()
    if stat.st_size < DIGEST_CACHE_MIN_BYTES:
        return _file_sha256(path)
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    try:
        cache = digest_cache_path()
        cache.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(cache, timeout=60)) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS digest (path TEXT PRIMARY KEY, inode INTEGER, size INTEGER,"
                       " mtime_ns INTEGER, sha256 TEXT)")
            row = db.execute("SELECT sha256 FROM digest WHERE path=? AND inode=? AND size=? AND mtime_ns=?",
                             key).fetchone()
            if row:
                return row[0]
            digest = _file_sha256(path)
            db.execute("INSERT OR REPLACE INTO digest VALUES (?, ?, ?, ?, ?)", (*key, digest))
            return digest
    except (OSError, sqlite3.Error):  # no writable cache: the digest is still right, only slower
        return _file_sha256(path)


def sha256_path(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder: of its files' relative names and SHA-256s, in sorted order."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path)}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()
