"""HTTP(S) downloads for ``acquire``: Range resume, bounded retries, MD5, part concatenation.

- A download goes to ``<name>.part`` next to its destination and is resumed with an HTTP
  ``Range`` request when the stage is re-run (or retried after a dropped connection).
- Retries are bounded: at most ``retries`` retries in a row, with exponential backoff; a
  failure after new bytes arrived starts a new count (so a long download over a flaky link
  goes on as long as it makes progress). Client errors (401/403/404 ...) are not retried; the
  error says what to do.
- A finished file whose MD5 differs from the expected one is moved to ``quarantine/`` and the
  error says so; the next run downloads it afresh.
- The access key is read from an environment variable when a request is made and sent only to
  the hosts listed in ``auth_hosts``. It is never logged, stored, or put in an exception text,
  and the auth header is not forwarded on redirects (``add_unredirected_header``).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from pipeline.common.io import atomic_file

log = logging.getLogger(__name__)

CHUNK = 1 << 20
KEY_SCHEMES = ("basic", "bearer", "header", "query")
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
QUARANTINE = "quarantine"
VERIFIED_CACHE = ".verified.json"


class DownloadError(RuntimeError):
    """A URL could not be fetched; the message says what to do."""


class ChecksumError(DownloadError):
    """A file's MD5 differs from the expected one."""


@dataclass(frozen=True)
class KeyAuth:
    """Where the access key comes from and how it is sent.

    ``scheme``: ``basic`` (the variable holds ``user:password``), ``bearer``
    (``Authorization: Bearer <key>``), ``header`` (``<header>: <key>``) or ``query``
    (``?<param>=<key>`` appended to the URL). The key itself is never an attribute.
    """

    env: str = "AVMATCH_VOX_KEY"
    scheme: str = "basic"
    hosts: tuple[str, ...] = ()
    header: str = "X-Access-Key"
    param: str = "key"

    def __post_init__(self) -> None:
        if self.scheme not in KEY_SCHEMES:
            raise ValueError(f"key scheme must be one of {', '.join(KEY_SCHEMES)}; got {self.scheme!r}")

    def applies_to(self, url: str) -> bool:
        host = (urllib.parse.urlsplit(url).hostname or "").lower()
        return host in {h.lower() for h in self.hosts}

    def secret(self) -> str | None:
        return os.environ.get(self.env) or None

    def request(self, url: str) -> urllib.request.Request:
        """A request for ``url`` carrying the key when ``url``'s host is in ``hosts``."""
        key = self.secret() if self.applies_to(url) else None
        if key is None:
            if self.applies_to(url):
                log.warning("%s is not set; requesting without an access key", self.env)
            return urllib.request.Request(url)
        if self.scheme == "query":
            sep = "&" if urllib.parse.urlsplit(url).query else "?"
            url = f"{url}{sep}{urllib.parse.urlencode({self.param: key})}"
            return urllib.request.Request(url)
        req = urllib.request.Request(url)
        if self.scheme == "basic":
            if ":" not in key:
                raise DownloadError(f"{self.env} must hold 'user:password' for key scheme basic")
            token = base64.b64encode(key.encode()).decode()
            req.add_unredirected_header("Authorization", f"Basic {token}")
        elif self.scheme == "bearer":
            req.add_unredirected_header("Authorization", f"Bearer {key}")
        else:
            req.add_unredirected_header(self.header, key)
        return req

    def redact(self, text: str) -> str:
        """``text`` with every form of the key replaced by ``***``."""
        key = self.secret()
        if not key:
            return text
        forms = {key, urllib.parse.quote(key), urllib.parse.quote_plus(key),
                 base64.b64encode(key.encode()).decode()}
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "***")
        return text


@dataclass(frozen=True)
class Retry:
    retries: int = 5
    backoff: float = 2.0
    max_backoff: float = 60.0
    timeout: float = 60.0

    def delay(self, failures: int) -> float:
        return min(self.max_backoff, self.backoff * 2 ** max(0, failures - 1))


@dataclass
class Transfer:
    """Book-keeping for one file: bytes already on disk and the size the server announced."""

    part: Path
    offset: int = 0
    total: int | None = None
    requests: int = 0
    failures: list[str] = field(default_factory=list)


def md5sum(path: Path, chunk: int = 4 * CHUNK) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class VerifiedCache:
    """Remembers MD5s of large files by (size, mtime) so re-runs do not re-hash them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict] = {}
        if path.is_file():
            self.entries = json.loads(path.read_text(encoding="utf-8"))

    def md5(self, file: Path) -> str:
        stat = file.stat()
        key = str(file.resolve())
        hit = self.entries.get(key)
        if hit and hit["size"] == stat.st_size and hit["mtime_ns"] == stat.st_mtime_ns:
            return hit["md5"]
        value = md5sum(file)
        self.remember(file, value)
        return value

    def remember(self, file: Path, md5: str) -> None:
        stat = file.stat()
        self.entries[str(file.resolve())] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                             "md5": md5}
        with atomic_file(self.path) as tmp:
            tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True), encoding="utf-8")


def parse_checksums(text: str) -> dict[str, str]:
    """``md5sum``-style lines (``<md5> <name>`` or ``<name> <md5>``) -> ``{name: md5}``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.replace("*", " ").split()
        if len(fields) != 2:
            continue
        a, b = fields
        if is_md5(a):
            out[Path(b).name] = a.lower()
        elif is_md5(b):
            out[Path(a).name] = b.lower()
    return out


def is_md5(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdefABCDEF" for c in text)


def quarantine(file: Path, got: str) -> Path:
    """Move a bad download into ``quarantine/`` beside it (named with its MD5) and return it."""
    target = file.parent / QUARANTINE / f"{file.name}.{got}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(file, target)
    return target


def check_md5(file: Path, expected: str | None, cache: VerifiedCache, *, ours: bool,
              label: str | None = None) -> str:
    """Return the MD5 of ``file``; on mismatch quarantine it (if we downloaded it) and raise."""
    got = cache.md5(file)
    if expected is None or got == expected.lower():
        return got
    name = label or file.name
    if not ours:
        raise ChecksumError(
            f"{name}: MD5 {got} but expected {expected} ({file}). The file is damaged or a "
            "different version: download it again, or fix its md5 in data.archives.")
    moved = quarantine(file, got)
    raise ChecksumError(
        f"{name}: MD5 {got} but expected {expected}. The bad file was moved to {moved}. Run "
        "`avmatch acquire` (or `dvc repro acquire`) again to download it afresh; if the mismatch "
        "repeats, the server copy or the md5 in data.archives is wrong.")


def _status_hint(status: int, auth: KeyAuth, url: str) -> str:
    if status in (401, 403):
        where = ("" if auth.applies_to(url) else
                 "; the host is not in data.auth_hosts, so no key was sent")
        return (f"access denied: set the environment variable {auth.env} to your VoxCeleb access "
                f"key (scheme {auth.scheme}){where}")
    if status == 404:
        return ("not found: dataset links have moved before; update the url in data.archives, or "
                "download the file by hand and give its local `path:`")
    return "the server refused the request"


def _open(url: str, transfer: Transfer, auth: KeyAuth, retry: Retry):
    """Send one GET (ranged when part of the file is already on disk); return the response."""
    req = auth.request(url)
    if transfer.offset:
        req.add_header("Range", f"bytes={transfer.offset}-")
    transfer.requests += 1
    return urllib.request.urlopen(req, timeout=retry.timeout)


def _content_range_start(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> ``(100, 1000)``; ``bytes */1000`` -> ``(None, 1000)``."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    size = int(total) if total.strip().isdigit() else None
    start = span.split("-")[0]
    return (int(start) if start.isdigit() else None), size


def _receive(resp, transfer: Transfer, desc: str) -> None:
    """Append the response body to the ``.part`` file; raise on a short body."""
    status = resp.status
    if status == 206:
        start, total = _content_range_start(resp.headers.get("Content-Range"))
        if start != transfer.offset:  # a confused server: start the file over
            transfer.part.unlink(missing_ok=True)
            transfer.offset = 0
            raise ConnectionError(f"server resumed at byte {start}; restarting from byte 0")
        transfer.total = total
        mode = "ab"
    else:  # 200: the server ignored Range (or none was sent): start over
        transfer.offset = 0
        length = resp.headers.get("Content-Length")
        transfer.total = int(length) if length and length.isdigit() else None
        mode = "wb"
    with open(transfer.part, mode) as fh, tqdm(
            total=transfer.total, initial=transfer.offset, desc=desc, unit="B",
            unit_scale=True, unit_divisor=1024, mininterval=1.0, leave=False) as bar:
        while block := resp.read(CHUNK):
            fh.write(block)
            transfer.offset += len(block)
            bar.update(len(block))
    if transfer.total is not None and transfer.offset < transfer.total:
        raise http.client.IncompleteRead(b"", transfer.total - transfer.offset)


def _attempt(url: str, transfer: Transfer, auth: KeyAuth, retry: Retry, desc: str) -> bool:
    """One request; ``True`` when the file is complete. Retryable problems raise ``OSError``."""
    try:
        with _open(url, transfer, auth, retry) as resp:
            _receive(resp, transfer, desc)
        return True
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and transfer.offset:
            _, total = _content_range_start(exc.headers.get("Content-Range"))
            if total == transfer.offset:
                return True  # the .part file already holds the whole body
            transfer.part.unlink()
            transfer.offset = 0
            raise ConnectionError("range not satisfiable; restarting from byte 0") from None
        if exc.code in RETRYABLE_STATUS:
            raise ConnectionError(f"HTTP {exc.code}") from None
        raise DownloadError(f"HTTP {exc.code}: {_status_hint(exc.code, auth, url)}") from None


def fetch(url: str, dest: Path, *, auth: KeyAuth | None = None, retry: Retry | None = None) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part`` with Range resume and bounded retries.

    An existing ``dest`` is kept as is (checksums are the caller's business). On failure the
    ``.part`` file stays, so the next call resumes where this one stopped.
    """
    auth = auth or KeyAuth()
    retry = retry or Retry()
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    transfer = Transfer(part, part.stat().st_size if part.is_file() else 0)
    if transfer.offset:
        log.info("%s: resuming at byte %d", dest.name, transfer.offset)
    failures = 0
    while True:
        before = transfer.offset
        try:
            if _attempt(url, transfer, auth, retry, dest.name):
                break
        except DownloadError as exc:
            raise DownloadError(auth.redact(f"{dest.name}: {exc} (url {url})")) from None
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, short reads
            failures = 1 if transfer.offset > before else failures + 1
            reason = auth.redact(f"{type(exc).__name__}: {exc}")
            transfer.failures.append(reason)
            if failures > retry.retries:
                raise DownloadError(
                    f"{dest.name}: giving up after {failures} failed attempts ({reason}; url {url}). "
                    f"{transfer.offset} bytes are kept in {part}; run the stage again to resume, or "
                    "download the file by hand and give its local `path:` in data.archives."
                ) from None
            wait = retry.delay(failures)
            log.warning("%s: %s at byte %d; retrying in %.1f s", dest.name, reason,
                        transfer.offset, wait)
            time.sleep(wait)
    os.replace(part, dest)
    log.info("%s: downloaded %d bytes in %d request(s)", dest.name, dest.stat().st_size,
             transfer.requests)
    return dest


def concatenate(parts: Iterable[Path], dest: Path) -> str:
    """Concatenate ``parts`` in order into ``dest`` (atomically); return the MD5 of the result."""
    parts = list(parts)
    digest = hashlib.md5(usedforsecurity=False)
    total = sum(p.stat().st_size for p in parts)
    with atomic_file(dest) as tmp, open(tmp, "wb") as out, tqdm(
            total=total, desc=f"concatenate {dest.name}", unit="B", unit_scale=True,
            unit_divisor=1024, mininterval=1.0, leave=False) as bar:
        for part in parts:
            with open(part, "rb") as fh:
                while block := fh.read(4 * CHUNK):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    return digest.hexdigest()


def copy_file(src: Path, dest: Path) -> None:
    """Copy a small file into the data tree atomically."""
    with atomic_file(dest) as tmp:
        shutil.copyfile(src, tmp)


def is_url(text: str) -> bool:
    return urllib.parse.urlsplit(text).scheme in ("http", "https")


def url_name(url: str) -> str:
    """The file name in a URL's path (``''`` when the path ends with ``/``)."""
    return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name


MAX_SMALL = 32 << 20  # bytes: a single image larger than this is refused


def fetch_small(url: str, dest: Path, timeout: float, check=None) -> None:
    """One GET, no retries and no key (for many small files on third-party hosts).

    The body is written to ``dest`` atomically, after ``check(tmp_path)`` (which raises on a bad
    file) accepted it. Raises :class:`DownloadError` with a short reason otherwise.
    """
    if not is_url(url):
        raise DownloadError("not an http(s) URL")
    req = urllib.request.Request(url, headers={"User-Agent": "avmatch"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read(MAX_SMALL + 1)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"HTTP {exc.code}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DownloadError(type(exc).__name__) from None
    if len(data) > MAX_SMALL:
        raise DownloadError(f"larger than {MAX_SMALL} bytes")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(dest) as tmp:
        tmp.write_bytes(data)
        if check is not None:
            check(tmp)
