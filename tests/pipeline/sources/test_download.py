"""Downloads against a loopback server: Range resume, bounded retries, MD5, quarantine, the key."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from pipeline.sources import download
from pipeline.sources.download import (
    ChecksumError,
    DownloadError,
    KeyAuth,
    Retry,
    VerifiedCache,
    check_md5,
    concatenate,
    fetch,
    parse_checksums,
)
from tests.pipeline.loopback import Loopback

FAST = Retry(retries=2, backoff=0.01, timeout=5)
BODY = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
KEY_ENV = "AVMATCH_TEST_KEY"
SECRET = "alice:s3cr3t-Pa55"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_plain_download_and_no_refetch(tmp_path: Path) -> None:
    with Loopback({"a.bin": BODY}) as srv:
        dest = fetch(srv.url("a.bin"), tmp_path / "a.bin", retry=FAST)
        assert dest.read_bytes() == BODY
        fetch(srv.url("a.bin"), tmp_path / "a.bin", retry=FAST)
    assert srv.paths() == ["a.bin"]  # the second call found the file and sent nothing
    assert not (tmp_path / "a.bin.part").exists()


def test_interrupted_transfer_resumes_with_range_in_the_same_call(tmp_path: Path) -> None:
    with Loopback({"a.bin": BODY}, cut_once={"a.bin": 100_000}) as srv:
        fetch(srv.url("a.bin"), tmp_path / "a.bin", retry=FAST)
    assert (tmp_path / "a.bin").read_bytes() == BODY
    assert [r.range for r in srv.requests] == [None, "bytes=100000-"]


def test_interrupted_transfer_keeps_the_part_and_resumes_next_run(tmp_path: Path) -> None:
    dest = tmp_path / "a.bin"
    with Loopback({"a.bin": BODY}, cut_once={"a.bin": 123_456}) as srv:
        with pytest.raises(DownloadError, match="123456 bytes are kept.*run the stage again"):
            fetch(srv.url("a.bin"), dest, retry=Retry(retries=0, backoff=0.01, timeout=5))
        assert not dest.exists()
        assert (tmp_path / "a.bin.part").read_bytes() == BODY[:123_456]
        fetch(srv.url("a.bin"), dest, retry=FAST)
    assert dest.read_bytes() == BODY
    assert srv.requests[-1].range == "bytes=123456-"


def test_server_ignoring_range_restarts_from_zero(tmp_path: Path) -> None:
    (tmp_path / "a.bin.part").write_bytes(b"garbage from an old run")
    with Loopback({"a.bin": BODY}, ignore_range=True) as srv:
        fetch(srv.url("a.bin"), tmp_path / "a.bin", retry=FAST)
    assert (tmp_path / "a.bin").read_bytes() == BODY


def test_complete_part_file_is_finished_on_416(tmp_path: Path) -> None:
    (tmp_path / "a.bin.part").write_bytes(BODY)
    with Loopback({"a.bin": BODY}) as srv:
        fetch(srv.url("a.bin"), tmp_path / "a.bin", retry=FAST)
    assert (tmp_path / "a.bin").read_bytes() == BODY and len(srv.requests) == 1


def test_retries_are_bounded_with_backoff(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Loopback({"a.bin": BODY}, statuses={"a.bin": [503] * 10}) as srv:
        with pytest.raises(DownloadError, match="giving up after 3 failed attempts"):
            fetch(srv.url("a.bin"), tmp_path / "a.bin", retry=FAST)
    assert len(srv.requests) == 3  # 1 try + 2 retries
    with Loopback({"a.bin": BODY}, statuses={"a.bin": [503, 502]}) as srv:
        fetch(srv.url("a.bin"), tmp_path / "a.bin", retry=FAST)
    assert (tmp_path / "a.bin").read_bytes() == BODY and len(srv.requests) == 3
    assert Retry(backoff=2.0, max_backoff=5.0).delay(1) == 2.0
    assert Retry(backoff=2.0, max_backoff=5.0).delay(4) == 5.0


def test_missing_url_fails_at_once_with_advice(tmp_path: Path) -> None:
    with Loopback({}) as srv:
        with pytest.raises(DownloadError, match="HTTP 404.*local `path:`"):
            fetch(srv.url("gone.zip"), tmp_path / "gone.zip", retry=FAST)
    assert len(srv.requests) == 1
    assert not (tmp_path / "gone.zip").exists()


def test_checksum_mismatch_quarantines_our_download(tmp_path: Path) -> None:
    cache = VerifiedCache(tmp_path / ".verified.json")
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"not the archive")
    with pytest.raises(ChecksumError, match="moved to .*quarantine.*again to download it afresh"):
        check_md5(bad, md5(BODY), cache, ours=True)
    assert not bad.exists()
    assert (tmp_path / "quarantine" / f"x.zip.{md5(b'not the archive')}").is_file()
    # a user's local file is never moved
    mine = tmp_path / "mine.zip"
    mine.write_bytes(b"user file")
    with pytest.raises(ChecksumError, match="download it again, or fix its md5"):
        check_md5(mine, md5(BODY), cache, ours=False)
    assert mine.read_bytes() == b"user file"
    assert check_md5(mine, md5(b"user file").upper(), cache, ours=False) == md5(b"user file")


def test_verified_cache_skips_rehash_until_the_file_changes(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    cache = VerifiedCache(tmp_path / "c.json")
    assert cache.md5(f) == md5(b"abc")
    again = VerifiedCache(tmp_path / "c.json")  # persisted
    assert again.entries[str(f.resolve())]["md5"] == md5(b"abc")
    f.write_bytes(b"abcd")
    assert again.md5(f) == md5(b"abcd")


def test_concatenate_in_order(tmp_path: Path) -> None:
    parts = []
    for i, chunk in enumerate([BODY[:1000], BODY[1000:5000], BODY[5000:]]):
        parts.append(tmp_path / f"p{i}")
        parts[-1].write_bytes(chunk)
    assert concatenate(parts, tmp_path / "whole") == md5(BODY)
    assert (tmp_path / "whole").read_bytes() == BODY


def test_parse_checksums_both_orders() -> None:
    text = (f"{md5(b'a')}  vox1_dev_wav_partaa\n"
            f"vox1_dev_wav_partab {md5(b'b')}\n"
            f"{md5(b'c').upper()} *dir/vox1_dev_wav.zip\n# comment line here\n\n")
    assert parse_checksums(text) == {"vox1_dev_wav_partaa": md5(b"a"),
                                     "vox1_dev_wav_partab": md5(b"b"),
                                     "vox1_dev_wav.zip": md5(b"c")}


def test_key_is_sent_only_to_listed_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    auth = KeyAuth(env=KEY_ENV, scheme="basic", hosts=("127.0.0.1",))
    req = auth.request("http://127.0.0.1:9/f")
    assert req.unredirected_hdrs["Authorization"].startswith("Basic ")
    assert "Authorization" not in req.headers  # not forwarded on redirects
    assert not auth.request("https://elsewhere.example/f").unredirected_hdrs
    query = KeyAuth(env=KEY_ENV, scheme="query", hosts=("h.example",), param="key")
    assert query.request("https://h.example/dl?file=a").full_url.endswith(
        "file=a&key=alice%3As3cr3t-Pa55")
    assert query.redact("GET https://h.example/dl?file=a&key=alice%3As3cr3t-Pa55") == \
        "GET https://h.example/dl?file=a&key=***"
    bearer = KeyAuth(env=KEY_ENV, scheme="header", hosts=("h.example",), header="X-Key")
    assert bearer.request("https://h.example/x").unredirected_hdrs == {"X-key": SECRET}
    with pytest.raises(ValueError, match="key scheme"):
        KeyAuth(scheme="cookie")


def test_key_download_and_no_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    auth = KeyAuth(env=KEY_ENV, scheme="basic", hosts=("127.0.0.1",))
    with Loopback({"a.bin": BODY}, basic_auth=SECRET, cut_once={"a.bin": 5000}) as srv:
        monkeypatch.delenv(KEY_ENV, raising=False)
        with pytest.raises(DownloadError, match=f"HTTP 401: .*set the environment variable {KEY_ENV}"):
            fetch(srv.url("a.bin"), tmp_path / "a.bin", auth=auth, retry=FAST)
        monkeypatch.setenv(KEY_ENV, "bob:wrong-key")
        with pytest.raises(DownloadError) as info:
            fetch(srv.url("a.bin"), tmp_path / "a.bin", auth=auth, retry=FAST)
        assert "wrong-key" not in str(info.value)
        monkeypatch.setenv(KEY_ENV, SECRET)
        fetch(srv.url("a.bin"), tmp_path / "a.bin", auth=auth, retry=FAST)
    assert (tmp_path / "a.bin").read_bytes() == BODY
    assert len(srv.requests) == 4  # 401, 401, cut, resumed
    forms = [SECRET, "s3cr3t-Pa55", download.base64.b64encode(SECRET.encode()).decode()]
    for form in forms:
        assert form not in caplog.text
        for f in tmp_path.rglob("*"):
            assert not f.is_file() or form.encode() not in f.read_bytes()
