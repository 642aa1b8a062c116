"""``avmatch report``: the ablation grid of docs/ablations.md as DVC experiments, and its tables.

``avmatch report queue-ablations [--run]`` queues every row of docs/ablations.md as a DVC
experiment (``dvc exp run --queue -n NAME -S ...``, rows that give the same params queued once);
``dvc queue start`` then runs them. Without ``--run`` it prints the commands.

``avmatch report ablations [--exp-json FILE] [OUT.md]`` reads ``dvc exp show --json`` (runs it,
or reads a saved copy) and writes ``reports/ablations.md``: for each baseline commit, one table
per paper table of docs/ablations.md (P2VANet Tables III-VII, AML Tables VII-IX), each row its
setting (the doc's cells), the experiment that ran it, and the test metrics with their 95%
bootstrap confidence intervals (identity-level; ``reports/metrics.json`` keys
``test.<dir>.match.k<k>.U.acc`` and ``test.<dir>.verify.U.auc``, each with ``.ci_low`` and
``.ci_high``).

Matching an experiment to a row: the experiment's params (``params.yaml``, flattened to dotted
keys) differ from its baseline commit's params by exactly the row's ``-S`` overrides (an override
equal to the baseline's value is no difference; the baseline commit itself is the row without
overrides). Several runs of one row: the newest with metrics is shown. Experiments that match no
row, and rows no experiment ran, are listed too: nothing is dropped silently. Overrides are
parsed from the doc's tables: backticked ``-S key=value`` spans (values read as YAML, as DVC
reads them), ``$VAR`` from the doc's shell assignments (``AML="..."``), "defaults", and
references such as "as Table III Baseline". A table with one overrides column per dataset
(Table IV: VoxCeleb, VoxCeleb2) is rendered for the baselines of that dataset only
(``data.source: voxceleb2`` is VoxCeleb2, anything else VoxCeleb).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
import subprocess
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml

log = logging.getLogger(__name__)

DOC = Path("docs/ablations.md")
OUT = Path("reports/ablations.md")
PARAMS_FILE = "params.yaml"
METRICS_FILE = "reports/metrics.json"
SPLIT = "test"
DIRECTIONS = {"v2f": "V-F", "f2v": "F-V"}
MATCH_KEY = "{split}.{direction}.match.k{k}.U.acc"
AUC_KEY = "{split}.{direction}.verify.U.auc"
CI = (".ci_low", ".ci_high")
DEFAULT_DATASET = "VoxCeleb"
DATASET_SOURCES = {"VoxCeleb2": "voxceleb2"}  # dataset column -> data.source of its baselines
MISSING = "–"

_CODE = re.compile(r"`([^`]*)`(?:\s*\(((?:[^()]|\([^()]*\))*)\))?")  # `code` (note (nested))
_ASSIGN = re.compile(r"^([A-Z][A-Z0-9_]*)=[\"'](.*)[\"']\s*$")
_K = re.compile(r"\.match\.k(\d+)\.U\.acc$")


class ReportError(Exception):
    """The doc, the experiments JSON or DVC cannot be used (message says why)."""


# ---- flat dicts ----------------------------------------------------------------------------------

def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> one level of dotted keys (flat keys are kept as they are)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def same(a: Any, b: Any) -> bool:
    """Param equality as YAML means it: ``1 == 1.0``, lists element by element."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def diff(params: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """The flat keys whose value in ``params`` differs from ``base`` (absent = ``None``)."""
    return {k: params.get(k) for k in sorted(set(params) | set(base))
            if not same(params.get(k), base.get(k))}


# ---- docs/ablations.md -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One runnable setting: the ``-S`` arguments as written and the overrides they make."""

    args: tuple[str, ...]
    overrides: dict[str, Any]
    note: str = ""

    def relative(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """The overrides that change ``base`` (those equal to its values dropped)."""
        return {k: v for k, v in self.overrides.items() if not same(v, base.get(k))}


@dataclass(frozen=True)
class Row:
    cells: tuple[str, ...]  # the doc's descriptive cells (label first)
    setting: Setting | None  # None: the doc gives no runnable overrides for this row

    @property
    def label(self) -> str:
        note = f" ({self.setting.note})" if self.setting and self.setting.note else ""
        return f"{self.cells[0]}{note}"


@dataclass(frozen=True)
class Table:
    paper: str  # e.g. "P²VANet"
    title: str  # e.g. "Table III — ablation, 1:2 matching (V-F / F-V)"
    dataset: str | None  # the dataset of its overrides column, when the doc names one
    columns: tuple[str, ...]  # descriptive headers
    rows: tuple[Row, ...]

    @property
    def number(self) -> str:
        """``III`` of ``Table III — ...``."""
        return self.title.split()[1] if self.title.startswith("Table ") else self.title

    @property
    def heading(self) -> str:
        return f"{self.paper} {self.title}" + (f" ({self.dataset})" if self.dataset else "")


@dataclass(frozen=True)
class Ablations:
    tables: tuple[Table, ...]
    # the doc's own `dvc exp run --queue -n NAME` lines: (section title, overrides, name)
    commands: tuple[tuple[str, str, str], ...] = ()

    def name_for(self, table: Table, overrides: Mapping[str, Any]) -> str | None:
        """The doc's name for ``overrides``, preferring one queued in ``table``'s section."""
        key = _canonical(overrides)
        found = [(title, name) for title, k, name in self.commands if k == key]
        return next((n for t, n in found if t == table.title), found[0][1] if found else None)


def parse_overrides(code: str, variables: Mapping[str, str]) -> tuple[tuple[str, ...], dict]:
    """``-S key=value`` pairs of a shell fragment (``$VAR`` expanded): ``(args, overrides)``."""
    for name, value in variables.items():
        code = re.sub(rf"\${name}\b|\$\{{{name}\}}", value, code)
    tokens = shlex.split(code)
    args: list[str] = []
    overrides: dict[str, Any] = {}
    for flag, value in zip(tokens, tokens[1:], strict=False):
        if flag in ("-S", "--set-param"):
            key, sep, text = value.partition("=")
            if not sep:
                raise ReportError(f"cannot read the override {value!r} in `{code}`")
            overrides[key.strip()] = yaml.safe_load(text) if text.strip() else None
            args += ["-S", value]
    return tuple(args), overrides


def _canonical(overrides: Mapping[str, Any]) -> str:
    return json.dumps(overrides, sort_keys=True, default=str)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _settings(cell: str, variables: Mapping[str, str], tables: Sequence[Table], paper: str
              ) -> list[Setting | None]:
    spans = [(code, note or "") for code, note in _CODE.findall(cell)
             if "-S" in code or "$" in code]
    if spans:
        return [Setting(*parse_overrides(code, variables), note=note.strip())
                for code, note in spans]
    text = cell.strip().lower()
    if "default" in text:
        return [Setting((), {})]
    found = re.match(r"as table (\w+) (.+)$", cell.strip(), flags=re.IGNORECASE)
    if found:
        number, label = found.group(1), found.group(2).strip()
        for table in tables:
            if table.paper == paper and table.number == number:
                hits = [r.setting for r in table.rows if r.cells[0] == label]
                if hits:
                    return hits
        log.warning("ablations doc: cannot resolve %r", cell)
    return [None]


def _table(paper: str, title: str, lines: Sequence[str], variables: Mapping[str, str],
           done: Sequence[Table]) -> list[Table]:
    header = _cells(lines[0])
    body = [_cells(line) for line in lines[2:]]
    override_cols = [i for i, h in enumerate(header) if h.lower().startswith("overrides")]
    if not override_cols:
        return []
    keep = [i for i in range(len(header)) if i not in override_cols]
    out = []
    for col in override_cols:
        named = re.search(r"\(([^)]*)\)", header[col])
        dataset = named.group(1).strip() if named and len(override_cols) > 1 else None
        rows, label = [], ""
        for cells in body:
            cells = cells + [""] * (len(header) - len(cells))
            label = cells[0] or label
            described = (label, *(cells[i] for i in keep[1:]))
            for setting in _settings(cells[col], variables, done, paper):
                rows.append(Row(described, setting))
        out.append(Table(paper, title, dataset, tuple(header[i] for i in keep), tuple(rows)))
    return out


def parse_ablations(text: str) -> Ablations:
    """The tables of docs/ablations.md, with their rows' overrides, and the queued names."""
    lines = text.splitlines()
    variables: dict[str, str] = {}
    commands: list[tuple[str, str, str]] = []  # (section title, name, shell fragment)
    in_code, title = False, ""
    for line in lines:
        if line.startswith("```"):
            in_code = not in_code
            continue
        if not in_code:
            title = line[4:].strip() if line.startswith("### ") else title
            continue
        assigned = _ASSIGN.match(line.strip())
        if assigned:
            variables[assigned.group(1)] = assigned.group(2)
        tokens = line.split()
        if tokens[:4] == ["dvc", "exp", "run", "--queue"] and "-n" in tokens:
            commands.append((title, tokens[tokens.index("-n") + 1], line))
    tables: list[Table] = []
    paper = title = ""
    block: list[str] = []
    in_code = False
    for line in [*lines, ""]:
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and line.lstrip().startswith("|"):
            block.append(line)
            continue
        if block:
            tables += _table(paper, title, block, variables, tables) if title else []
            block = []
        if line.startswith("## "):
            paper, title = line[3:].strip(), ""
        elif line.startswith("### "):
            title = line[4:].strip()
    named = tuple((section, _canonical(parse_overrides(fragment, variables)[1]), name)
                  for section, name, fragment in commands)
    return Ablations(tuple(tables), named)


def read_ablations(path: str | Path = DOC) -> Ablations:
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: the ablations doc is not there (pass --doc)")
    ablations = parse_ablations(path.read_text(encoding="utf-8"))
    if not ablations.tables:
        raise ReportError(f"{path}: no table with an 'overrides' column")
    return ablations


# ---- dvc exp show --json ------------------------------------------------------------------------------

@dataclass
class Experiment:
    name: str
    rev: str
    params: dict[str, Any]  # flat
    metrics: dict[str, Any]  # flat (empty: none yet)
    state: str  # baseline | success | queued | running | failed
    timestamp: str = ""
    error: str = ""

    @property
    def done(self) -> bool:
        return bool(self.metrics) and self.state in ("baseline", "success")


@dataclass
class Baseline:
    commit: Experiment
    experiments: list[Experiment]

    @property
    def runs(self) -> list[Experiment]:
        """The commit itself (no overrides) and its experiments."""
        return [self.commit, *self.experiments]

    @property
    def source(self) -> str:
        return str(self.commit.params.get("data.source", ""))


def _file_data(files: Mapping[str, Any] | None, name: str) -> tuple[dict[str, Any], str]:
    """Flattened ``data`` of ``files[name]`` (or of all files), and any error message."""
    files = files or {}
    chosen = {name: files[name]} if name in files else files
    out: dict[str, Any] = {}
    errors = []
    for entry in chosen.values():
        entry = entry or {}
        if entry.get("error"):
            errors.append(str(entry["error"].get("msg", entry["error"])))
        out.update(flatten(entry.get("data") or {}))
    return out, "; ".join(errors)


def _experiment(state: Mapping[str, Any], status: str, metrics_file: str) -> Experiment:
    data = state.get("data") or {}
    params, _ = _file_data(data.get("params"), PARAMS_FILE)
    metrics, metrics_error = _file_data(data.get("metrics"), metrics_file)
    error = state.get("error") or {}
    message = str(error.get("msg", error)) if error else metrics_error
    rev = str(state.get("rev", ""))
    return Experiment(name=str(state.get("name") or rev[:7]), rev=rev, params=params,
                      metrics=metrics, state=status, timestamp=str(data.get("timestamp") or ""),
                      error=message)


def parse_exp_show(rows: Sequence[Mapping[str, Any]], metrics_file: str = METRICS_FILE
                   ) -> list[Baseline]:
    """Baselines and their experiments from ``dvc exp show --json`` (DVC 3: a list of commit
    entries, each with ``experiments``: ranges of ``revs`` and an ``executor`` state). The
    ``workspace`` entry is left out (it repeats a run or holds unsaved changes)."""
    if not isinstance(rows, list):
        raise ReportError("not `dvc exp show --json` output (expected a list of commits)")
    baselines = []
    for entry in rows:
        if entry.get("rev") == "workspace":
            continue
        commit = _experiment(entry, "baseline", metrics_file)
        experiments = []
        for exp_range in entry.get("experiments") or []:
            executor = exp_range.get("executor") or {}
            status = executor.get("state") or "success"
            for state in exp_range.get("revs") or []:
                experiments.append(_experiment(state, status, metrics_file))
        baselines.append(Baseline(commit, experiments))
    return baselines


def dvc_exp_show(cwd: str | Path = ".") -> list[dict[str, Any]]:
    """Run ``dvc exp show --json`` in ``cwd``."""
    try:
        done = subprocess.run(["dvc", "exp", "show", "--json"], cwd=cwd, capture_output=True,
                              text=True, check=False)
    except FileNotFoundError as exc:
        raise ReportError("dvc is not installed (or pass --exp-json)") from exc
    if done.returncode != 0:
        raise ReportError(f"`dvc exp show --json` failed: {done.stderr.strip()[-500:]}")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise ReportError(f"`dvc exp show --json` printed no JSON ({exc})") from exc


# ---- matching and rendering --------------------------------------------------------------------------

def dataset_of(baseline: Baseline) -> str:
    for dataset, source in DATASET_SOURCES.items():
        if baseline.source == source:
            return dataset
    return DEFAULT_DATASET


def applies(table: Table, dataset: str) -> bool:
    """Whether ``table`` belongs to ``dataset``: its own dataset column, or (no column) the
    default dataset, the one every other table of the doc is about."""
    return table.dataset == dataset or (table.dataset is None and dataset == DEFAULT_DATASET)


def matches(row: Row, baseline: Baseline) -> list[Experiment]:
    """Runs of ``baseline`` whose params differ from it by exactly ``row``'s overrides."""
    if row.setting is None:
        return []
    wanted = row.setting.relative(baseline.commit.params)
    found = []
    for run in baseline.runs:
        changed = diff(run.params, baseline.commit.params)
        if len(changed) == len(wanted) and all(k in changed and same(changed[k], v)
                                               for k, v in wanted.items()):
            found.append(run)
    return found


def pick(runs: Sequence[Experiment]) -> Experiment | None:
    """The newest run with metrics, else the newest run (queued, running or failed)."""
    if not runs:
        return None
    return max(runs, key=lambda r: (r.done, r.timestamp, r.state != "baseline"))


def multiway_k(baselines: Iterable[Baseline], split: str = SPLIT) -> int | None:
    """The largest k > 2 with a ``<split>.<dir>.match.k<k>.U.acc`` key in any run."""
    ks = {int(m.group(1)) for b in baselines for r in b.runs for key in r.metrics
          if key.startswith(f"{split}.") and (m := _K.search(key))}
    ks.discard(2)
    return max(ks) if ks else None


def cell(metrics: Mapping[str, Any], key: str) -> str:
    """``93.1 [91.2, 94.8]`` (%, with the CI when the metrics have it) or ``–``."""
    value = metrics.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return MISSING
    low, high = (metrics.get(key + s) for s in CI)
    text = f"{100 * value:.1f}"
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        text += f" [{100 * low:.1f}, {100 * high:.1f}]"
    return text


def metric_columns(k: int | None, split: str = SPLIT) -> list[tuple[str, str]]:
    """``(header, key)`` of the metric columns: 1:2, 1:k, verification AUC per direction."""
    columns = [(f"1:2 {label}", MATCH_KEY.format(split=split, direction=d, k=2))
               for d, label in DIRECTIONS.items()]
    if k:
        columns += [(f"1:{k} {label}", MATCH_KEY.format(split=split, direction=d, k=k))
                    for d, label in DIRECTIONS.items()]
    columns += [(f"AUC {label}", AUC_KEY.format(split=split, direction=d))
                for d, label in DIRECTIONS.items()]
    return columns


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _run_name(runs: Sequence[Experiment], shown: Experiment) -> str:
    name = f"`{shown.name}`" + (" (baseline)" if shown.state == "baseline" else "")
    if not shown.done:
        name += f" — {shown.state}" + (f": {shown.error}" if shown.error else "")
    others = len(runs) - 1
    return name + (f" (+{others} more run{'s' * (others > 1)})" if others else "")


def render_table(table: Table, baseline: Baseline, columns: Sequence[tuple[str, str]],
                 used: set[str]) -> list[str]:
    headers = [*table.columns, "overrides", "experiment", *(h for h, _ in columns)]
    lines = [f"### {table.heading}", "", "| " + " | ".join(headers) + " |",
             "|" + " --- |" * len(headers)]
    for row in table.rows:
        runs = matches(row, baseline)
        shown = pick(runs)
        used.update(r.rev for r in runs)
        overrides = MISSING if row.setting is None else (
            " ".join(f"`{k}={json.dumps(v) if not isinstance(v, str) else v}`"
                     for k, v in row.setting.relative(baseline.commit.params).items())
            or "defaults")
        where = "not run" if shown is None else _run_name(runs, shown)
        values = [cell(shown.metrics, key) if shown is not None and shown.done else MISSING
                  for _, key in columns]
        cells = [row.label, *row.cells[1:], overrides, where, *values]
        lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    return [*lines, ""]


def render(ablations: Ablations, baselines: Sequence[Baseline], split: str = SPLIT) -> str:
    """``reports/ablations.md``."""
    k = multiway_k(baselines, split)
    columns = metric_columns(k, split)
    out = ["# Ablations", "",
           "Written by `avmatch report ablations` from `dvc exp show --json` and the rows of "
           "docs/ablations.md (queue them with `avmatch report queue-ablations --run`, then "
           "`dvc queue start`).", "",
           f"Metrics: the `{split}` split (unseen-unheard), unconstrained (U) lists: 1:2"
           + (f" and 1:{k}" if k else "") + " matching accuracy and verification ROC AUC, in %, "
           "each with its 95% bootstrap confidence interval [low, high] (resampling query "
           "identities). V-F = v2f (a voice, rank faces), F-V = f2v. A row's experiment is the "
           "run whose params differ from its baseline commit's by exactly the row's overrides "
           "(`overrides` shows them relative to the baseline); `–` = no value.", ""]
    if not baselines:
        out += ["No baseline commit in the experiments JSON.", ""]
    for baseline in baselines:
        commit = baseline.commit
        dataset = dataset_of(baseline)
        out += [f"## Baseline `{commit.name}` ({commit.rev[:7]}), data.source "
                f"`{baseline.source or '?'}`: {len(baseline.experiments)} experiment(s)", ""]
        used: set[str] = set()
        for table in ablations.tables:
            if applies(table, dataset):
                out += render_table(table, baseline, columns, used)
        out += _unmatched(baseline, used)
    return "\n".join(out).rstrip() + "\n"


def _unmatched(baseline: Baseline, used: set[str]) -> list[str]:
    rest = [r for r in baseline.experiments if r.rev not in used]
    if not rest:
        return []
    lines = ["### Experiments that match no row", "",
             "| experiment | state | params changed from the baseline |", "| --- | --- | --- |"]
    for run in rest:
        changed = diff(run.params, baseline.commit.params)
        text = " ".join(f"`{k}={v}`" for k, v in changed.items()) or "none"
        lines.append(f"| `{run.name}` | {run.state} | {_escape(text)} |")
    return [*lines, ""]


def write_report(out: str | Path, ablations: Ablations, baselines: Sequence[Baseline]) -> str:
    from pipeline.common.io import atomic_file

    text = render(ablations, baselines)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return text


# ---- queueing the grid ---------------------------------------------------------------------------------

def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9.]+", "-", ascii_text.lower()).strip("-")


def _arabic(number: str) -> str:
    """``III`` -> ``3`` (table numbers are Roman in both papers); other text unchanged."""
    values = {"I": 1, "V": 5, "X": 10, "L": 50}
    if not number or any(c not in values for c in number):
        return number
    total = 0
    for c, nxt in zip(number, [*number[1:], ""], strict=True):
        total += -values[c] if nxt and values[nxt] > values[c] else values[c]
    return str(total)


def default_name(table: Table, row: Row) -> str:
    """``p2v-t3-baseline`` style: paper, table number, row label."""
    return _slug(f"{_slug(table.paper)[:3]}-t{_arabic(table.number)}-{row.label}")


def queue_commands(ablations: Ablations, base_params: Mapping[str, Any],
                   dataset: str = DEFAULT_DATASET) -> list[list[str]]:
    """``dvc exp run --queue -n NAME -S ...`` for each distinct setting of ``dataset``'s rows
    (settings giving the same params as an earlier one, relative to ``base_params``, are
    queued once). Names are the doc's where it queues the same overrides."""
    seen: set[str] = set()
    names: set[str] = set()
    commands = []
    for table in ablations.tables:
        if not applies(table, dataset):
            continue
        for row in table.rows:
            if row.setting is None:
                continue
            relative = row.setting.relative(base_params)
            key = _canonical(relative)
            if key in seen:
                continue
            seen.add(key)
            name = (ablations.name_for(table, row.setting.overrides)
                    or ablations.name_for(table, relative)
                    or default_name(table, row))
            while name in names:
                name += "-b"
            names.add(name)
            commands.append(["dvc", "exp", "run", "--queue", "-n", name, *row.setting.args])
    return commands


# ---- the commands ------------------------------------------------------------------------------------------

def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: cannot read JSON ({exc})") from exc


def ablations_cli(
    out: Path = typer.Argument(OUT, help="Markdown file to write."),
    exp_json: Path | None = typer.Option(
        None, "--exp-json", help="A saved `dvc exp show --json` (default: run it; save one with "
                                 "`--all-commits` for the experiments of every commit)."),
    doc: Path = typer.Option(DOC, "--doc", help="The ablations doc whose rows lay out the tables."),
    metrics_file: str = typer.Option(METRICS_FILE, "--metrics-file",
                                     help="The metrics file of the experiments."),
) -> None:
    """Write the ablation tables (P2VANet Tables III-VII, AML Tables VII-IX) with CIs from the
    DVC experiments."""
    try:
        ablations = read_ablations(doc)
        rows = _load_json(exp_json) if exp_json is not None else dvc_exp_show()
        baselines = parse_exp_show(rows, metrics_file)
        write_report(out, ablations, baselines)
    except ReportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    n = sum(len(b.experiments) for b in baselines)
    typer.echo(f"wrote {out}: {len(baselines)} baseline(s), {n} experiment(s)")


def queue_cli(
    run: bool = typer.Option(False, "--run", help="Queue them (default: print the commands)."),
    dataset: str = typer.Option(DEFAULT_DATASET, "--dataset",
                                help="Dataset column of tables that have one (VoxCeleb, VoxCeleb2)."),
    doc: Path = typer.Option(DOC, "--doc", help="The ablations doc."),
    params: Path = typer.Option(Path(PARAMS_FILE), "--params",
                                help="The params every row is relative to (the workspace's)."),
) -> None:
    """Queue every row of docs/ablations.md as a DVC experiment; then run `dvc queue start`."""
    from pipeline.common.config import load_params

    try:
        commands = queue_commands(read_ablations(doc), flatten(load_params(params)), dataset)
    except (ReportError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if not run:
        typer.echo("\n".join(shlex.join(c) for c in commands))
        typer.echo("dvc queue start")
        return
    failed = []
    for command in commands:
        done = subprocess.run(command, check=False)
        if done.returncode != 0:
            failed.append(command[5])
    typer.echo(f"queued {len(commands) - len(failed)} of {len(commands)} experiments"
               + (f"; failed: {', '.join(failed)}" if failed else "")
               + ". Run them with `dvc queue start` (add `-j N` for N workers).")
    if failed:
        raise typer.Exit(1)
