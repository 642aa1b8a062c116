"""``acquire`` stage: put raw data in ``data/raw``: synthesize it, point at a local tree, or
download, verify and extract the real datasets.

Sources (``data.source``):
- ``synthetic`` (default): the embedded corpus from :mod:`pipeline.synth.corpus`, params section
  ``synth``; its names follow the manifest's split letters (``manifest.val_initials`` and
  ``manifest.test_initials``, stated once), so every split holds identities of both genders.
- ``local``: an already-extracted tree at ``data.root`` in the real layout, used in place: only
  ``source.json`` is written, and every later stage reads through
  :func:`pipeline.sources.layout.resolve_root`.
- ``voxceleb1`` / ``voxceleb2`` / ``celeba``: the files in ``data.archives`` (URLs or local
  paths, each with its published MD5; multi-part archives are concatenated first) are fetched
  into ``data.downloads``, verified, and extracted into ``data.root`` (default
  ``data/extracted``), which is then used in place like ``local``. The tree is checked for the
  files the source's layout needs. See docs/real-data.md.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import typer
from tqdm.auto import tqdm

from pipeline.common.config import ConfigError, build, load_params, section
from pipeline.common.io import atomic_dir, atomic_file, write_json
from pipeline.common.probe import BadInput, probe_image
from pipeline.common.rejects import Rejects
from pipeline.sources import download, extract, scan, scan_real
from pipeline.sources import layout as L
from pipeline.sources.layout import SOURCE_FILE
from pipeline.synth import corpus as synth

log = logging.getLogger(__name__)

ARCHIVE_SOURCES = ("voxceleb1", "voxceleb2", "celeba")
SOURCES = ("synthetic", "local", *ARCHIVE_SOURCES)
DEFAULT_EXTRACT_ROOT = "data/extracted"
MARKERS = ".avmatch/extracted"
VGGFACE_FAILURES = "fetch_failures.tsv"


@dataclass(frozen=True)
class ArchiveEntry:
    """One ``data.archives`` item.

    A file (``url`` or local ``path``) with its ``md5``. Entries with ``group: <name>`` are parts,
    concatenated in listed order into the entry named ``<name>`` (which has no url/path and
    carries the MD5 of the whole). Top-level entries are extracted into ``<data.root>/<into>``
    when they are zip/tar archives (``strip`` drops leading path components), else copied there.
    """

    name: str = ""
    url: str | None = None
    path: str | None = None
    md5: str | None = None
    group: str | None = None
    into: str = "."
    strip: int = 0
    extract: bool | None = None

    @property
    def is_group(self) -> bool:
        return self.url is None and self.path is None


def _entry(index: int, item: object) -> ArchiveEntry:
    label = f"data.archives[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{label} must be a mapping with url/path, md5, ...; got {item!r}")
    entry = build(ArchiveEntry, item, name=label)
    if entry.url and entry.path:
        raise ConfigError(f"{label}: give either url or path, not both")
    if entry.url and not download.is_url(entry.url):
        raise ConfigError(f"{label}: url {entry.url!r} is not http(s); use path: for local files")
    name = entry.name or (download.url_name(entry.url) if entry.url else Path(entry.path or "").name)
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"{label}: needs a plain file name (name: ...)")
    md5 = entry.md5.lower() if entry.md5 else None
    if md5 is not None and not download.is_md5(md5):
        raise ConfigError(f"{label}: md5 {entry.md5!r} is not 32 hex digits")
    if entry.into.startswith("/") or ".." in Path(entry.into).parts or entry.strip < 0:
        raise ConfigError(f"{label}: into must be a relative path inside data.root, strip >= 0")
    return ArchiveEntry(name, entry.url, entry.path, md5, entry.group, entry.into, entry.strip,
                        entry.extract)


def parse_archives(items: tuple[dict, ...]) -> list[ArchiveEntry]:
    """Validate ``data.archives``: unique names, every group has parts and every part a group."""
    entries = [_entry(i, item) for i, item in enumerate(items)]
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"data.archives: duplicate names {dupes}; set name: on the entries")
    groups = {e.name for e in entries if e.is_group}
    for e in entries:
        if e.group is not None and (e.is_group or e.group not in groups):
            raise ConfigError(f"data.archives: part {e.name!r} needs a url/path and a group entry "
                              f"named {e.group!r} (with no url/path) for the whole")
    used = {e.group for e in entries if e.group}
    for g in sorted(groups - used):
        raise ConfigError(f"data.archives: {g!r} has no url/path and no parts (group: {g})")
    return entries


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"
    root: str | None = None
    archives: tuple[dict, ...] = ()
    checksums: str | None = None
    downloads: str = "data/downloads"
    auth_hosts: tuple[str, ...] = ()
    key_env: str = "AVMATCH_VOX_KEY"
    key_scheme: str = "basic"
    key_name: str = "key"
    retries: int = 5
    backoff: float = 2.0
    timeout: float = 60.0
    keep_parts: bool = False
    vggface_fetch: bool = False
    vggface_workers: int = 16
    vggface_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {', '.join(SOURCES)}; got {self.source!r}")
        if self.source == "local" and not self.root:
            raise ValueError("data.source: local needs data.root, the path of the extracted tree")
        parse_archives(self.archives)  # fail early on a malformed list
        download.KeyAuth(self.key_env, self.key_scheme)  # validates the scheme

    def entries(self) -> list[ArchiveEntry]:
        return parse_archives(self.archives)

    def auth(self) -> download.KeyAuth:
        return download.KeyAuth(env=self.key_env, scheme=self.key_scheme, hosts=self.auth_hosts,
                                header=self.key_name, param=self.key_name)

    def retry(self) -> download.Retry:
        return download.Retry(retries=self.retries, backoff=self.backoff, timeout=self.timeout)


def acquire_local(raw_dir: Path, root: str) -> dict:
    """Write ``source.json`` pointing at ``root`` (checked to exist)."""
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"data.root {path} is not a directory")
    with atomic_dir(raw_dir) as tmp:
        (tmp / SOURCE_FILE).write_text(json.dumps({"root": str(path)}, indent=2) + "\n")
    log.info("using the local tree %s in place", path)
    return {"source": "local", "root": str(path)}


def acquire_synthetic(raw_dir: Path, cfg: synth.SynthConfig,
                      initials: Mapping[str, str] | None = None) -> dict:
    """Generate the embedded corpus into ``raw_dir`` (atomically), its names split by the
    manifest's ``initials`` (default A-B val, C-E test)."""
    with atomic_dir(raw_dir) as tmp:
        summary = synth.synthesize(tmp, cfg, initials=initials)
    return {"source": "synthetic", **summary}


class Fetcher:
    """Turns ``data.archives`` entries into verified files under ``data.downloads``."""

    def __init__(self, data: DataConfig) -> None:
        self.downloads = Path(data.downloads).expanduser().resolve()
        self.auth = data.auth()
        self.retry = data.retry()
        self.keep_parts = data.keep_parts
        self.cache = download.VerifiedCache(self.downloads / download.VERIFIED_CACHE)
        self.checksums = self._checksums(data.checksums)

    def _checksums(self, where: str | None) -> dict[str, str]:
        """Read the optional MD5 list (``data.checksums``: URL or path, md5sum format)."""
        if not where:
            return {}
        if download.is_url(where):
            dest = self.downloads / f"checksums-{download.url_name(where) or 'list'}"
            dest.unlink(missing_ok=True)  # always fresh: it is small
            download.fetch(where, dest, auth=self.auth, retry=self.retry)
        else:
            dest = Path(where).expanduser()
        return download.parse_checksums(dest.read_text(encoding="utf-8"))

    def md5_of(self, entry: ArchiveEntry) -> str | None:
        md5 = entry.md5 or self.checksums.get(entry.name)
        if md5 is None:
            log.warning("%s: no MD5 given (data.archives md5 or data.checksums); not verified",
                        entry.name)
        return md5

    def single(self, entry: ArchiveEntry) -> tuple[Path, str, bool]:
        """Fetch or locate one file; return ``(path, md5, downloaded_by_us)``."""
        expected = self.md5_of(entry)
        if entry.path is not None:
            path = Path(entry.path).expanduser().resolve()
            if not path.is_file():
                raise download.DownloadError(
                    f"{entry.name}: {path} does not exist (data.archives path); download it "
                    "there by hand (see docs/real-data.md)")
            return path, download.check_md5(path, expected, self.cache, ours=False), False
        dest = self.downloads / entry.name
        download.fetch(entry.url or "", dest, auth=self.auth, retry=self.retry)
        return dest, download.check_md5(dest, expected, self.cache, ours=True), True

    def group(self, entry: ArchiveEntry, parts: list[ArchiveEntry]) -> tuple[Path, str, bool]:
        """Fetch every part, concatenate them in order, verify the whole."""
        expected = self.md5_of(entry)
        dest = self.downloads / entry.name
        if dest.is_file():
            return dest, download.check_md5(dest, expected, self.cache, ours=True), True
        got, errors = [], []
        for part in parts:  # fetch every part before failing, so a re-run redoes only bad ones
            try:
                got.append(self.single(part))
            except download.DownloadError as exc:
                errors.append(exc)
        if errors:
            raise combined(errors)
        log.info("%s: concatenating %d parts", entry.name, len(got))
        md5 = download.concatenate([p for p, _, _ in got], dest)
        if expected is not None and md5 != expected:
            moved = download.quarantine(dest, md5)
            checked = all(p.md5 or p.name in self.checksums for p in parts)
            hint = ("every part matched its own MD5, so the md5 given for the whole is probably "
                    "wrong: check it against the dataset page" if checked else
                    "one of the parts is damaged: delete (or re-download) the parts and run "
                    "the stage again; per-part MD5s (md5 on each part, or data.checksums) "
                    "would name the bad one")
            raise download.ChecksumError(
                f"{entry.name}: the concatenated parts have MD5 {md5} but expected {expected}; "
                f"moved to {moved}. {hint}.")
        self.cache.remember(dest, md5)
        if not self.keep_parts:
            for path, _, ours in got:
                if ours:
                    path.unlink()
        return dest, md5, True


def combined(errors: list[download.DownloadError]) -> download.DownloadError:
    """One error for several failed files (a ChecksumError if every one is a checksum error)."""
    if len(errors) == 1:
        return errors[0]
    cls = (download.ChecksumError if all(isinstance(e, download.ChecksumError) for e in errors)
           else download.DownloadError)
    return cls(f"{len(errors)} files failed:\n" + "\n".join(f"- {e}" for e in errors))


def install(file: Path, md5: str, entry: ArchiveEntry, root: Path) -> dict:
    """Extract an archive into ``root/<into>`` (or copy a plain file there)."""
    target = root / entry.into
    kind = extract.archive_kind(file) if entry.extract is not False else None
    if entry.extract and kind is None:
        raise ValueError(f"{entry.name}: extract: true but it is not a zip or tar archive")
    if kind is not None:
        done = extract.extract(file, target, strip=entry.strip, md5=md5,
                               marker=root / MARKERS / f"{entry.name}.json")
        return {"name": entry.name, "md5": md5, "into": entry.into, **done}
    download.copy_file(file, target / entry.name)
    return {"name": entry.name, "md5": md5, "into": entry.into, "files": 1, "skipped": False}


# Files each source needs under the data root (any one of a tuple will do).
REQUIRED: dict[str, list[tuple[str, ...]]] = {
    "voxceleb1": [(L.VOX1_META,), (L.VOX1_WAV,), (L.VOX1_FACES, L.VOX1_VGGFACE_LISTS)],
    "voxceleb2": [(L.VOX2_META,), L.VOX2_AAC_DIRS, (L.VGGFACE2_META,),
                  tuple(f"{L.VGGFACE2}/{s}" for s in L.VGGFACE2_SPLITS)],
    "celeba": [(L.CELEBA_IMAGES,), (L.CELEBA_ATTR,), (L.CELEBA_PARTITION,), (L.CELEBA_IDENTITY,)],
}
HINTS = {
    L.VOX1_META: "vox1_meta.csv was once removed from the official site; add it as a `path:` "
                 "entry with into: voxceleb1",
    L.VOX2_META: "add vox2_meta.csv as an entry with into: voxceleb2",
    L.VGGFACE2_META: "VGGFace2's meta/identity_meta.csv gives the names: add it with "
                     "into: voxceleb2/vggface2",
}


def check_layout(source: str, root: Path) -> None:
    """Raise ``FileNotFoundError`` listing what ``source`` needs but ``root`` lacks."""
    needs = list(REQUIRED.get(source, []))
    if source != "celeba" and (root / L.CELEBA).exists():
        needs += REQUIRED["celeba"]  # CelebA alongside VoxCeleb, for the attribute model
    missing = [alts for alts in needs if not any((root / a).exists() for a in alts)]
    if missing:
        lines = [" or ".join(alts) + (f" ({HINTS[alts[0]]})" if alts[0] in HINTS else "")
                 for alts in missing]
        raise FileNotFoundError(f"data.source {source}: {root} lacks " + "; ".join(lines)
                                + ". Check data.archives (into/strip) against docs/real-data.md.")


def _fetch_image(task: tuple[str, str, Path], timeout: float) -> tuple[str, str | None]:
    """Thread worker: ``(key, None)`` on success, ``(key, reason)`` on failure."""
    key, url, dest = task
    try:
        download.fetch_small(url, dest, timeout, check=probe_image)
    except (download.DownloadError, BadInput) as exc:
        return key, str(exc).splitlines()[0][:200]
    return key, None


def vggface_tasks(root: Path, known_bad: set[str]) -> list[tuple[str, str, Path]]:
    """``(Name/id, url, dest)`` for every VoxCeleb1 identity's list line not fetched yet."""
    names = {scan.name_key(r["name"]) for r in scan.read_vox1_meta(root / L.VOX1_META,
                                                                    Rejects("acquire"))}
    tasks = []
    for entry in sorted((root / L.VOX1_VGGFACE_LISTS).glob("*.txt")):
        name = entry.name[:-4]
        if scan.name_key(name) not in names:
            continue
        rel = f"{L.VOX1_VGGFACE_LISTS}/{entry.name}"
        for row in scan_real.read_vggface_list(entry, rel, Rejects("acquire")):
            key = f"{name}/{row['id']}"
            dest = root / L.VOX1_VGGFACE_IMAGES / name / f"{row['id']}.jpg"
            if key not in known_bad and not dest.exists():
                tasks.append((key, row["url"], dest))
    return tasks


def fetch_vggface(root: Path, data: DataConfig) -> dict:
    """Fetch the VGGFace (v1) images listed for VoxCeleb1 identities (many URLs are dead).

    Images already on disk and URLs that failed before (``vggface/fetch_failures.tsv``) are
    skipped, so re-runs only try new lines. Images are checked to be JPEG/PNG before they land.
    """
    failures_file = root / L.VOX1_VGGFACE / VGGFACE_FAILURES
    failed: dict[str, str] = {}
    if failures_file.is_file():
        failed = dict(line.split("\t", 1) for line in
                      failures_file.read_text(encoding="utf-8").splitlines() if "\t" in line)
    tasks = vggface_tasks(root, set(failed))
    fetched = 0
    with ThreadPoolExecutor(max_workers=max(1, data.vggface_workers)) as pool:
        results = pool.map(functools.partial(_fetch_image, timeout=data.vggface_timeout), tasks)
        for key, reason in tqdm(results, total=len(tasks), desc="vggface images", unit="img",
                                mininterval=1.0):
            if reason is None:
                fetched += 1
            else:
                failed[key] = reason
    with atomic_file(failures_file) as tmp:
        tmp.write_text("".join(f"{k}\t{v}\n" for k, v in sorted(failed.items())),
                       encoding="utf-8")
    log.info("vggface: %d images fetched, %d failed now, %d failed in all", fetched,
             len(tasks) - fetched, len(failed))
    on_disk = sum(1 for p in (root / L.VOX1_VGGFACE_IMAGES).rglob("*") if p.is_file())
    return {"tried": len(tasks), "fetched": fetched, "failed_total": len(failed),
            "images": on_disk}


def acquire_archives(raw_dir: Path, data: DataConfig) -> dict:
    """Fetch, verify and extract ``data.archives`` into ``data.root``; point ``raw_dir`` at it."""
    root = Path(data.root or DEFAULT_EXTRACT_ROOT).expanduser().resolve()
    raw = raw_dir.resolve()
    if root == raw or raw in root.parents:
        raise ValueError(f"data.root {root} must not be inside {raw_dir} (acquire replaces it)")
    entries = data.entries()
    parts: dict[str, list[ArchiveEntry]] = defaultdict(list)
    for e in entries:
        if e.group is not None:
            parts[e.group].append(e)
    fetcher = Fetcher(data) if entries else None
    installed, errors = [], []
    for entry in entries:
        if entry.group is not None or fetcher is None:
            continue
        try:
            if entry.is_group:
                file, md5, _ = fetcher.group(entry, parts[entry.name])
            else:
                file, md5, _ = fetcher.single(entry)
        except download.DownloadError as exc:  # go on with the others; report all at the end
            errors.append(exc)
            continue
        installed.append(install(file, md5, entry, root))
    if errors:
        raise combined(errors)
    check_layout(data.source, root)
    extra = {}
    if data.vggface_fetch and data.source == "voxceleb1":
        extra["vggface"] = fetch_vggface(root, data)
    # data/raw holds only this pointer; it also fingerprints what was installed, so DVC re-runs
    # the later stages when the archive list (or the fetched VGGFace set) changes
    pointer = {"root": str(root), "source": data.source,
               **({"vggface_images": extra["vggface"]["images"]} if extra else {}),
               "archives": [{k: a[k] for k in ("name", "md5", "into")} for a in installed]}
    with atomic_dir(raw_dir) as tmp:
        (tmp / SOURCE_FILE).write_text(json.dumps(pointer, indent=2, sort_keys=True) + "\n")
    log.info("%s: %d archive(s) in place under %s", data.source, len(installed), root)
    return {"source": data.source, "root": str(root), "archives": installed, **extra}


def run(raw_dir: Path, data: DataConfig, synth_cfg: synth.SynthConfig,
        initials: Mapping[str, str] | None = None) -> dict:
    """Acquire ``data.source``; ``initials`` (the manifest's split letters) shape the synthetic
    corpus only."""
    if data.source in ARCHIVE_SOURCES:
        return acquire_archives(raw_dir, data)
    if data.archives:
        log.warning("data.archives is ignored with data.source: %s", data.source)
    if data.source == "local":
        return acquire_local(raw_dir, data.root or "")
    return acquire_synthetic(raw_dir, synth_cfg, initials)


def cli(
    raw_dir: Path = typer.Argument(..., help="Where the raw data goes (data/raw)."),
    params: Path = typer.Option(
        Path("params.yaml"),
        help="Params file; reads `data`, `synth`, manifest.val_initials and manifest.test_initials."),
    summary: Path | None = typer.Option(None, help="Optional JSON summary path."),
) -> None:
    """Download, verify and extract the raw data, or synthesize the embedded corpus."""
    values = load_params(params)
    data = build(DataConfig, section(values, "data"), name="data")
    synth_cfg = build(synth.SynthConfig, section(values, "synth"), name="synth")
    result = run(raw_dir, data, synth_cfg, synth.initials_from_params(values))
    if summary is not None:
        write_json(summary, result)
