"""Turn a comparison's run directories into a markdown section and PNG convergence plots.

    python -m experiments.report outputs/compare/classic --name classic

Everything is recomputed from the runs' ``metrics.jsonl`` and ``protocol.json``: the target is
the baseline's mean final validation loss, steps/time-to-target the first evaluation at or below
it. The section replaces the one with the same name in the markdown file (between markers), so
other sections of docs/results.md are left alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import statistics
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from assocmem.storage import strict_json, write_atomically  # noqa: E402
from experiments.budget import TAIL, budget_verdict, tail_fall, tail_window  # noqa: E402
from experiments.cli_files import output_path  # noqa: E402
from experiments.loop import first_reaching  # noqa: E402
from experiments.step_cost import time_to_target  # noqa: E402
from experiments.validate_config import RECORD_SUFFIXES  # noqa: E402

# ``experiments.compare`` writes what it will run here first and marks it complete at the end.
PLAN = "plan.json"


def load_runs(root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{task: {optimizer: {"protocol": ..., "runs": [(summary, history), ...]}}}``: the
    evaluation seeds each ``protocol.json`` names, and no other folder.

    Raises:
        ValueError: no ``protocol.json`` under ``root`` (nothing to report: a section is never
            overwritten with empty tables), a named seed without its summary, or files from
            more than one ``experiments.compare`` invocation (a re-run into the same folder),
            or a comparison that did not finish (its ``plan.json`` is not marked complete: the
            missing tasks and optimizers are named). A folder without ``plan.json`` (written
            before it existed) is read as it is.
    """
    tasks: dict[str, dict[str, dict[str, Any]]] = {}
    protocols = sorted(root.glob("*/*/protocol.json"))
    if not protocols:
        raise ValueError(f"no comparison under {root} (no <task>/<optimizer>/protocol.json)")
    for protocol_file in protocols:
        opt_dir = protocol_file.parent
        protocol = _read_record(protocol_file)
        runs = []
        # every lr diverged: nothing was evaluated (a comparison recorded before its protocol
        # named no seeds then still names them), and the table says "all diverged"
        evaluated = protocol.get("seeds", []) if protocol.get("best_lr") is not None else []
        for seed in evaluated:
            seed_dir = opt_dir / f"seed{seed}"
            if not (seed_dir / "summary.json").is_file():
                raise ValueError(f"{seed_dir}: the protocol names seed {seed} but it has no run")
            summary = _read_summary(seed_dir / "summary.json")
            history = _read_jsonl(seed_dir / "metrics.jsonl")
            if not history:  # a run writes its first record before its summary
                raise ValueError(f"{seed_dir / 'metrics.jsonl'}: no records (damaged?)")
            runs.append((summary, history))
        tasks.setdefault(opt_dir.parent.name, {})[opt_dir.name] = {
            "protocol": protocol,
            "runs": runs,
        }
    files = [*protocols, *root.glob("*/step_cost.json")]
    if (root / PLAN).is_file():
        files.append(root / PLAN)
        _check_complete(_read_record(root / PLAN), tasks, root)
    ids = {_read_record(f).get("run_id") for f in files}
    if len(ids) > 1:
        raise ValueError(
            f"{root} holds the files of {len(ids)} comparisons (a re-run into the same out_dir, "
            "interrupted or changed): run the comparison again, into a fresh out_dir"
        )
    return tasks


def _read_json(path: Path) -> Any:
    """One record; a file that is not JSON is named (a comparison holds hundreds of records,
    and json's "Expecting value: line 1 column 1" named none), as is one that cannot be read
    (missing, a folder)."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON record ({e})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None


def _read_record(path: Path) -> dict[str, Any]:
    """:func:`_read_json` of a file that must hold a JSON object (a protocol, a plan, a step
    cost): ``[]`` or ``null`` there ended the report in an AttributeError."""
    record = _read_json(path)
    if not isinstance(record, dict):
        raise ValueError(f"{path}: a JSON object expected, got {type(record).__name__}")
    return record


def _read_summary(path: Path) -> dict[str, Any]:
    """A run's ``summary.json`` with the fields the tables read (``status``, ``final``'s
    ``val_loss``): an emptied one ended the report in a KeyError."""
    summary = _read_record(path)
    final = summary.get("final")
    if summary.get("status") not in ("ok", "diverged") or not (
        isinstance(final, dict) and "val_loss" in final
    ):
        raise ValueError(
            f"{path}: not a run's summary (status 'ok' or 'diverged' and a final val_loss "
            "expected; damaged?)"
        )
    return summary


def _read_jsonl(path: Path) -> list[Any]:
    """A run's metrics, one JSON object per line; a bad line is named by file and number, as
    is a file that cannot be read."""
    records = []
    try:
        with path.open() as f:
            for number, line in enumerate(f, start=1):
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise ValueError(f"{path}:{number}: not a readable JSON record ({e})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path}:{number}: a JSON object expected")
                records.append(record)
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None
    return records


def _check_complete(plan: dict[str, Any], tasks: dict[str, dict[str, Any]], root: Path) -> None:
    """Refuse a comparison that did not finish, and a finished one whose records are not all
    there: every task and optimizer of the plan has its protocol, every task its step cost
    (a removed protocol dropped its row, the baseline's read "the baseline diverged", and a
    removed step cost "not measured", all with exit 0)."""
    missing = [
        f"{t}/{o}" for t in plan.get("tasks", []) for o in plan.get("optimizers", [])
        if o not in tasks.get(t, {})
    ]  # fmt: skip
    no_cost = [t for t in plan.get("tasks", []) if not (root / t / "step_cost.json").is_file()]
    if plan.get("complete") is not True:
        raise ValueError(
            f"{root}: the comparison did not finish (interrupted?); "
            + (f"missing {', '.join(missing)}" if missing else "its step costs were not measured")
            + ": run it again, into a fresh out_dir"
        )
    if missing or no_cost:
        lost = [f"{m}/protocol.json" for m in missing] + [f"{t}/step_cost.json" for t in no_cost]
        raise ValueError(
            f"{root}: the comparison finished but {', '.join(lost)} "
            f"{'is' if len(lost) == 1 else 'are'} missing (removed?): run it again"
        )


def load_step_costs(root: Path) -> dict[str, dict[str, Any]]:
    """``{task: step_cost.json}`` for the tasks whose step cost was measured."""
    return {f.parent.name: _read_record(f) for f in sorted(root.glob("*/step_cost.json"))}


def _mean_std(values: list[float]) -> str:
    """Mean ± standard deviation over seeds; a lone value is marked as such (no spread)."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4g} (n=1)"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "—"
    return f"{value / base:.2f}"


def grid_note(protocol: dict[str, Any]) -> str:
    """How the LR was tuned: grid points, extensions past an edge, an optimum still on one."""
    extensions = protocol.get("extensions", [])
    note = f"{len(protocol['grid']) - len(extensions)} pts"
    sides = [e["side"] for e in extensions]
    for side in dict.fromkeys(sides):
        note += f", +{sides.count(side)} {side}"
    edge = protocol.get("edge")
    if edge in ("low", "high"):
        note += f", best at {edge} edge"
    elif edge == "all diverged":
        note += ", all diverged"
    return note


def _cost_cell(cost: dict[str, Any] | None) -> str:
    if cost is None:
        return "—"
    return f"{1e3 * cost['median_s']:.3g} ({1e3 * cost['q1_s']:.3g}–{1e3 * cost['q3_s']:.3g})"


def baseline_label(baseline: str) -> str:
    """How the report names the baseline: "Adam" for ``adam`` (every section so far), else
    the config's name; a ``baseline=delta`` comparison read as measured against Adam."""
    return "Adam" if baseline == "adam" else f"`{baseline}`"


def task_table(
    optimizers: dict[str, dict[str, Any]],
    baseline: str,
    costs: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[str], float]:
    """The task's table: one row per optimizer, spreads over the evaluation seeds.

    ``costs`` maps optimizer -> its measured training-step cost (``step_cost.json``); without
    it (runs from before the measurement) time-to-target is not printed.
    """
    costs = costs or {}
    base = optimizers.get(baseline, {"runs": []})
    base_finals = [s["final"]["val_loss"] for s, _ in base["runs"] if s["status"] == "ok"]
    target = statistics.mean(base_finals) if base_finals else math.nan
    extra = sorted(
        {k for o in optimizers.values() for s, _ in o["runs"] for k in s["final"]} - {"val_loss"}
    )

    def reach(name: str) -> tuple[list[int], list[float]]:
        """Steps and seconds to the target of the seeds that reached it."""
        entry = optimizers[name]
        hits = [first_reaching(h, target)[0] for s, h in entry["runs"] if s["status"] == "ok"]
        steps = [hit for hit in hits if hit is not None]
        cost = costs.get(name)
        return steps, time_to_target(steps, cost["median_s"]) if cost else []

    def mean(values: list[float]) -> float | None:
        return statistics.mean(values) if values else None

    base_steps, base_secs = reach(baseline) if baseline in optimizers else ([], [])
    ratio = f"×{baseline_label(baseline)}"
    header = [
        "optimizer",
        "best lr",
        "LR grid",
        "final val_loss",
        *extra,
        "reached target",
        "steps-to-target",
        ratio,
        "time-to-target s",
        ratio,
        "step ms (IQR)",
        "state B/param",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in optimizers.items():
        runs = entry["runs"]
        ok = [s for s, _ in runs if s["status"] == "ok"]
        steps, secs = reach(name)
        diverged = len(runs) - len(ok)
        config = entry["protocol"].get("config", name)
        cells = [
            name if config == name else f"{name}: `{config}`",
            f"{entry['protocol']['best_lr']}" if entry["protocol"]["best_lr"] else "all diverged",
            grid_note(entry["protocol"]),
            _mean_std([s["final"]["val_loss"] for s in ok])
            + (f" ({diverged} diverged)" if diverged else ""),
            *[_mean_std([s["final"][k] for s in ok if k in s["final"]]) for k in extra],
            f"{len(steps)}/{len(runs)}",
            _mean_std(steps),
            _ratio(mean(steps), mean(base_steps)),
            _mean_std(secs),
            _ratio(mean(secs), mean(base_secs)),
            _cost_cell(costs.get(name)),
            f"{runs[0][0]['state_bytes_per_param']:.1f}" if runs else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines, target


def recommended_lines(optimizers: dict[str, dict[str, Any]]) -> list[str]:
    """Which configuration each preset with variants was evaluated in, and why (tuning seed)."""
    lines = []
    for name, entry in optimizers.items():
        variants = entry["protocol"].get("variants")
        if not variants:
            continue
        tried = "; ".join(
            f"`{c}` {v['best_loss']:.4g} at lr {v['best_lr']}"
            if v["best_lr"] is not None
            else f"`{c}` diverged at every lr"
            for c, v in variants.items()
        )
        runs = sum(v["grid_runs"] for v in variants.values())
        lines.append(
            f"- `{name}`: recommended `{entry['protocol']['config']}` (best tuning loss: {tried}; "
            f"{runs} tuning runs in all)"
        )
    if lines:
        lines.insert(
            0,
            "Recommended configurations, chosen on the tuning seed only (each variant tuned "
            "like a lone optimizer, so a preset with k variants had k times its tuning runs):",
        )
    return lines


def budget_line(optimizers: dict[str, dict[str, Any]], baseline: str) -> str:
    """Whether the baseline's validation curve had flattened when the budget ended."""
    runs = [
        (s, h) for s, h in optimizers.get(baseline, {"runs": []})["runs"] if s["status"] == "ok"
    ]
    falls = [f for _, h in runs if (f := tail_fall(h)) is not None]
    window = max((w for _, h in runs if (w := tail_window(h)) is not None), default=TAIL)
    finals = [s["final"]["val_loss"] for s, _ in runs]
    verdict = budget_verdict(falls, finals, window)
    return f"Budget: tuned `{baseline}`'s validation loss {verdict}."


def zero_shot_table(optimizers: dict[str, dict[str, Any]]) -> list[str]:
    """Held-out (zero-shot) AUC per generator family, mean ± std over seeds, per optimizer."""
    reports = {
        name: [s["report"] for s, _ in entry["runs"] if "report" in s]
        for name, entry in optimizers.items()
    }
    reports = {name: r for name, r in reports.items() if r}
    if not reports:
        return []
    families = sorted(
        {f for rs in reports.values() for r in rs for f in r["heldout"] if f != "mean"}
    )
    header = [
        "optimizer",
        *families,
        "held-out mean AUC",
        "held-out mean EER",
        "seen mean AUC",
        "FPR on test reals @0.5",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, rs in reports.items():
        cells = [name]
        cells += [_mean_std([r["heldout"][f]["auc"] for r in rs]) for f in families]
        cells += [
            _mean_std([r["heldout"]["mean"]["auc"] for r in rs]),
            _mean_std([r["heldout"]["mean"]["eer"] for r in rs]),
            _mean_std([r["seen"]["mean"]["auc"] for r in rs]),
            _mean_std([r["test_real_fpr"] for r in rs]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_task(task: str, optimizers: dict[str, dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    plotted: list[float] = []  # the means and the min–max bands: the scale must show them all
    for name, entry in optimizers.items():
        curves = [
            [(r["step"], r["val_loss"]) for r in h if "val_loss" in r]
            for s, h in entry["runs"]
            if s["status"] == "ok"
        ]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        steps = [c[i][0] for c in curves[:1] for i in range(n)]
        values = [[c[i][1] for c in curves] for i in range(n)]
        mean = [statistics.mean(v) for v in values]
        ax.plot(steps, mean, label=name)
        ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
        plotted += [x for v in values for x in v]
    ax.set(
        title=f"{task}: validation loss (mean, min–max over seeds)",
        xlabel="step",
        ylabel="val loss",
    )
    if plotted and all(v > 0 for v in plotted):
        ax.set_yscale("log")
    elif nonzero := [abs(v) for v in plotted if v != 0 and math.isfinite(v)]:
        # a band (or a mean) at or below 0: log would clip it; symlog is logarithmic beyond
        # the smallest magnitude plotted and linear through 0
        ax.set_yscale("symlog", linthresh=min(nonzero))
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(markdown: Path, name: str) -> str:
    """The text of report section ``name`` in ``markdown``."""
    text = markdown.read_text()
    begin, end = f"<!-- report:{name}:begin -->", f"<!-- report:{name}:end -->"
    return text[text.index(begin) + len(begin) : text.index(end)].strip()


# A section's name is in its markers (an HTML comment) and in its plots' file names: '-->'
# closed the comment early (the marker then showed on the page), a '/' put a plot in a new
# folder, an empty name headed a section "Comparison ``". Every name in docs/results.md fits.
_SECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_section_name(name: str) -> str:
    """``name`` if it can name a section (letters, digits, ``.``, ``_``, ``-``, not starting
    with a punctuation mark, not the reserved ``contents``), else a ``ValueError`` saying so."""
    if not isinstance(name, str) or not _SECTION_NAME.fullmatch(name):
        raise ValueError(
            f"section name {name!r}: expected letters, digits, '.', '_' or '-' (first a letter "
            "or digit); it names the section's markers and its plot files"
        )
    if name == CONTENTS:  # the list of contents is rewritten over it after every write
        raise ValueError(f"section name {name!r} is reserved for the file's list of contents")
    return name


# files a section is never written into: the records, weights and tables the commands write
NOT_MARKDOWN = (*RECORD_SUFFIXES, ".yml", ".safetensors", ".npz", ".pt", ".csv")


def check_markers(markdown: Path, name: str) -> None:
    """A ``ValueError`` now if section ``name`` of ``markdown`` (when it exists) could not be
    replaced later (lone or repeated markers), or if ``markdown`` is no markdown file (a
    record's suffix, or JSON inside): before a sweep, not after it."""
    text = markdown.read_text() if markdown.is_file() else None
    _refuse_non_markdown(markdown, text or "")
    if text is not None:
        _replaced(text, name, "")


def _refuse_non_markdown(markdown: Path, text: str) -> None:
    """``--write`` onto a ``--json`` record appended a section to it, exit 0, and the record
    no longer parsed (an audit: one swapped flag, hours of records)."""
    if Path(markdown).suffix.lower() in NOT_MARKDOWN:
        raise ValueError(
            f"{markdown}: a {Path(markdown).suffix} file is a record, not markdown; write the "
            "section into a .md file"
        )
    if text.lstrip()[:1] in ("[", "{"):
        try:
            json.loads(text)
        except ValueError:
            return
        raise ValueError(f"{markdown} holds JSON (a record?), not markdown; write into a .md file")


def write_json(path: Path, record: Any) -> None:
    """``record`` as strict JSON at ``path``, atomically (parents made): an interrupted write
    leaves the previous file, where ``write_text`` left it cut short."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically([(path, strict_json.dumps(record, indent=1, default=float).encode())])


def refuse_unreplaceable(parser: argparse.ArgumentParser, markdown: Path | None, name: str) -> None:
    """``parser.error`` now if a ``--write`` file's section ``name`` could not be replaced after
    the command's work (:func:`check_markers`: a lone or repeated marker, a bad name). Every
    command that measures or trains before it writes a section calls this first; the error
    used to come when the work was done, and the work was lost."""
    if markdown is None:
        return
    try:
        check_markers(Path(markdown), name)
    except ValueError as error:
        parser.error(str(error))


def _replaced(text: str, name: str, body: str) -> str:
    """``text`` with its section ``name`` (between its markers) holding ``body``; appended at
    the end if it has no such section."""
    if name != CONTENTS:
        check_section_name(name)
    begin, end = f"<!-- report:{name}:begin -->", f"<!-- report:{name}:end -->"
    section = f"{begin}\n{body.rstrip()}\n{end}"
    counts = text.count(begin), text.count(end)
    if counts == (1, 1) and text.index(begin) < text.index(end):
        return text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    if counts != (0, 0):  # replacing from a lone marker would take what follows it
        raise ValueError(
            f"section {name!r}: {counts[0]} begin and {counts[1]} end markers, expected one "
            "of each in that order; mend the file by hand"
        )
    return text.rstrip() + "\n\n" + section + "\n"


def read_runs(path: Path, *, lone: bool = False) -> list[dict[str, Any]]:
    """The run records of the JSON file ``path`` (a list of objects, as the training commands'
    ``--json`` writes; with ``lone``, one object is a list of one): a ``ValueError`` naming the
    file for one that is missing, unreadable, not JSON, or not such a list. The commands that
    read records (``detector_ceiling``, ``detector_ensemble --records``, ``clip_detectors
    --from-json``) each had their own reader, and not all of them named the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable records file ({e})") from None
    runs = [data] if lone and isinstance(data, dict) else data
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise ValueError(f"{path}: not a list of run records (objects)")
    return runs


def read_record(
    parser: argparse.ArgumentParser, path: Path, needed: Iterable[str]
) -> dict[str, Any]:
    """The JSON record a command wrote (``--from-json``): a usage error, naming the file, if it
    is unreadable, not JSON, or not an object with the ``needed`` keys set (a falsy value, an
    empty list of reports say, counts as missing)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        parser.error(f"--from-json {path}: {e}")
    if not isinstance(record, dict) or not all(record.get(k) for k in needed):
        parser.error(f"--from-json {path}: not a record of this command")
    return record


def _name_argument(text: str) -> str:
    """argparse ``type`` of ``--name``: :func:`check_section_name`'s rule, a usage error."""
    try:
        return check_section_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _plots_dir(text: str) -> Path:
    """argparse ``type`` of the folder the plots go to: one that is a file, or lies under a
    file or an unwritable folder, is a usage error at once (:func:`output_path` for folders)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder")
    output_path(str(path / "plot.png"))  # the same checks of the folders above
    return path


def replace_section(markdown: Path, name: str, body: str) -> None:
    """Write ``body`` into the section ``name`` of ``markdown``, leaving the rest alone but for
    its list of contents (:func:`contents`), if it has one, which follows the new headings.

    The file is replaced whole (a new file beside it, then ``os.replace``): a write that fails
    (a full disk) leaves the old file as it was, where an in-place rewrite left it cut short.
    Writers of one folder take turns (an exclusive lock on the folder, where the platform has
    ``fcntl``): two experiments refreshing their sections of one file at once lost one's
    section or doubled the other's markers."""
    check_section_name(name)
    if markdown.is_symlink():  # the file it links to is the one to update (os.replace
        markdown = markdown.resolve()  # replaced the link with a file, the target unchanged)
    markdown.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(markdown.parent):
        text = markdown.read_text() if markdown.exists() else "# Results\n"
        _refuse_non_markdown(markdown, text)
        text = _replaced(text, name, body)
        if CONTENTS_BEGIN in text:
            text = _replaced(text, CONTENTS, contents(text))
        write_atomically([(markdown, text.encode())])


@contextmanager
def folder_lock(folder: Path, *, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (no lock file left behind): waits for another
    holder, or with ``wait=False`` raises ``BlockingIOError`` at once. Without ``fcntl``
    (Windows) it does nothing."""
    if sys.platform == "win32":
        yield
        return
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        yield
    finally:
        os.close(fd)  # releases the lock


# The section that lists the others; a file without its markers has none.
CONTENTS = "contents"
CONTENTS_BEGIN = f"<!-- report:{CONTENTS}:begin -->"


def anchor(heading: str, taken: dict[str, int]) -> str:
    """GitHub's link anchor of a markdown heading's text: lower case, every character but
    letters, digits, spaces, hyphens and underscores dropped, spaces made hyphens, and ``-1``,
    ``-2``, ... after an anchor already ``taken`` (counted in place).

    Example:
        >>> taken = {}
        >>> anchor("Step cost", taken), anchor("Comparison `classic`", taken)
        ('step-cost', 'comparison-classic')
        >>> anchor("Step cost", taken)
        'step-cost-1'
    """
    slug = "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_")
    slug = slug.replace(" ", "-")
    count = taken.get(slug, 0)
    taken[slug] = count + 1
    return slug if count == 0 else f"{slug}-{count}"


def contents(text: str) -> str:
    """The list of ``text``'s second-level headings (``## ...``) outside code blocks, each a
    link to its anchor, in order: the body of its contents section."""
    lines, taken, fenced = ["## Contents", ""], {"contents": 1}, False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("## ") and line[3:].strip() != "Contents":
            title = line[3:].strip()
            lines.append(f"- [{title.replace('`', '')}](#{anchor(title, taken)})")
    return "\n".join(lines)


# ``main``'s defaults: the files a report command that does not name them writes.
DEFAULT_MARKDOWN, DEFAULT_PLOTS_DIR = Path("docs/results.md"), Path("docs/results")


def report_command(root: Path, name: str, markdown: Path, plots_dir: Path) -> str:
    """The command that writes this section again from the runs under ``root``, into the same
    ``markdown`` file and ``plots_dir`` (named unless they are :func:`main`'s defaults: a
    smoke comparison's section must not land in docs/results.md).

    Example:
        >>> report_command(Path("out"), "s", Path("o/r.md"), Path("o/my plots"))
        "python -m experiments.report out --name s --markdown o/r.md --plots-dir 'o/my plots'"
    """
    words = ["python -m experiments.report", shlex.quote(str(root)), "--name", shlex.quote(name)]
    if Path(markdown) != DEFAULT_MARKDOWN:
        words += ["--markdown", shlex.quote(str(markdown))]
    if Path(plots_dir) != DEFAULT_PLOTS_DIR:
        words += ["--plots-dir", shlex.quote(str(plots_dir))]
    return " ".join(words)


def write_report(
    root: Path,
    markdown: Path,
    plots_dir: Path,
    name: str,
    baseline: str | None = None,
    command: str | None = None,
) -> Path:
    """Write the ``name`` section of ``markdown`` (tables + plots) from the runs under ``root``;
    ``baseline`` and ``command`` default to what the comparison recorded in its protocols
    (``adam`` and none for one recorded before them).

    The section's markers are checked first: a refusal came after the plots were replaced,
    which then showed other runs than the section's tables."""
    check_markers(markdown, name)
    tasks = load_runs(root)
    recorded = next(iter(next(iter(tasks.values())).values()))["protocol"]
    baseline = baseline or recorded.get("baseline", "adam")
    command = command or recorded.get("command")
    costs = load_step_costs(root)
    body = [
        f"## Comparison `{name}`",
        "",
        f"Regenerate: `{command or 'python -m experiments.compare name=' + name}` "
        f"(runs under `{root}`); this section alone from those runs: "
        f"`{report_command(root, name, markdown, plots_dir)}`.",
        "",
        "Protocol: the same LR grid per optimizer on a tuning seed; when the best LR is the "
        "grid's smallest or largest, one more tuning run a grid step beyond it, repeated while "
        "the best stays on an edge, up to the same bound for every optimizer (column *LR grid*: "
        "points, extensions, and *best at … edge* when the bound was reached first); then the "
        f"evaluation seeds at the best LR. Target = tuned {baseline_label(baseline)}'s mean "
        "final validation loss; "
        "steps-to-target counts the first evaluation at or below it.",
        "",
        "Time-to-target is not the runs' wall clock (runs made one after another absorb "
        "whatever else the machine was doing): it is each seed's steps-to-target × the cost of "
        "one training step (batch, forward, backward, `opt.step()`), measured after the task's "
        "runs with all optimizers taking turns on the same model at their tuned LR "
        "(`experiments/step_cost.py`); *step ms* is that cost's median and interquartile range "
        "over the samples. Cells are mean ± std over the evaluation seeds (over those that "
        f"reached the target, for steps and time); ×{baseline_label(baseline)} is the ratio of "
        "the means.",
    ]
    for task, optimizers in tasks.items():
        cost = costs.get(task)
        lines, target = task_table(optimizers, baseline, cost["optimizers"] if cost else None)
        plot = plots_dir / f"{name}_{task}.png"
        plot_task(task, optimizers, plot)
        rel = plot.relative_to(markdown.parent) if plot.is_relative_to(markdown.parent) else plot
        body += [
            "",
            f"### {task} (target val_loss {target:.4g})",
            "",
            *(
                []
                if math.isfinite(target)
                else [
                    f"No target: the baseline ({baseline_label(baseline)}) diverged on every "
                    "evaluation seed, so no steps or time to it are given.",
                    "",
                ]
            ),
            *lines,
            "",
            *(recommended + [""] if (recommended := recommended_lines(optimizers)) else []),
            budget_line(optimizers, baseline),
            "",
            f"Step cost: {cost['method']}, {cost['threads']} thread(s)."
            if cost
            else "Step cost: not measured for these runs (time-to-target not shown).",
            "",
            f"![{task}]({rel})",
        ]
        if zero_shot := zero_shot_table(optimizers):
            body += [
                "",
                f"Zero-shot detection on held-out generator families (`{task}`; test split, "
                "unseen photos; AUC, mean ± std over seeds):",
                "",
                *zero_shot,
            ]
    replace_section(markdown, name, "\n".join(body))
    return markdown


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Write the section of a comparison's runs (experiments.compare's out_dir) "
        "into a markdown file, with the baseline and command the comparison recorded"
    )
    parser.add_argument("root", type=Path)
    parser.add_argument("--name", required=True, type=_name_argument)
    parser.add_argument(
        "--markdown", type=output_path, default=DEFAULT_MARKDOWN,
        help=f"default {DEFAULT_MARKDOWN}",
    )  # fmt: skip
    parser.add_argument("--plots-dir", type=_plots_dir, default=DEFAULT_PLOTS_DIR)
    args = parser.parse_args()
    if args.markdown.resolve().is_relative_to(args.root.resolve()):
        # it would write into the comparison's own records (plan.json, a run's summary)
        parser.error(f"--markdown {args.markdown} lies inside the runs' folder {args.root}")
    try:
        report = write_report(args.root, args.markdown, args.plots_dir, args.name)
    except ValueError as e:
        parser.error(str(e))
    print(report)


if __name__ == "__main__":
    main()
