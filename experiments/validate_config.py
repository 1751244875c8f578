"""Up-front checks of a composed hydra config, before anything is built or trained.

A typo in an override (``task.steps=abc``, ``seed=abc``, ``task.eval_every=0``) or an unusable
path (``data.cache_dir`` that cannot be written) used to surface as a traceback deep in the run,
or only after the whole forensic benchmark was built; ``task.steps=-5`` even finished as "ok".
Each check here raises :class:`ConfigError` with one line that names the key, the value and
what is expected; :func:`exit_on_error` prints that line and exits with status 2.

    from experiments.validate_config import exit_on_error, validate_run
    exit_on_error(validate_run, cfg)
"""

from __future__ import annotations

import itertools
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = [
    "ConfigError",
    "build_task",
    "check_jobs_before_hydra",
    "exit_on_error",
    "output_clash",
    "same_file",
    "validate_compare",
    "validate_meta_train",
    "validate_run",
]

CONF = Path(__file__).resolve().parent / "conf"


class ConfigError(ValueError):
    """An invalid config value; the message is one line naming the key."""

    def __init__(self, key: str, value: Any, expected: str, *, refused: str | None = None):
        detail = f"refused: {refused}" if refused else f"expected {expected}"
        super().__init__(f"{key} = {value!r}: {detail}")
        self.key, self.value, self.expected, self.refused = key, value, expected, refused


def exit_on_error(check: Callable[[DictConfig], None], cfg: DictConfig) -> None:
    """Run ``check(cfg)``; on a :class:`ConfigError` print ``config error: <line>`` to stderr and
    exit with status 2 (no traceback: the line says what to fix)."""
    try:
        check(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def build_task(cfg: DictConfig) -> Any:
    """The task ``cfg.task.build`` makes for ``cfg.seed``; a value the task's constructor refuses
    (``task.build.condition=-1``) is a :class:`ConfigError` naming ``task.build``, so a run ends
    with one line (exit status 2) before it writes anything, not with hydra's traceback."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(cfg.task.build, seed=cfg.seed)
    except InstantiationException as e:
        cause = e.__cause__ if isinstance(e.__cause__, (ValueError, TypeError)) else None
        if cause is None:
            raise
        build = OmegaConf.to_container(cfg.task.build, resolve=True)
        raise ConfigError("task.build", build, "", refused=str(cause)) from None


def check_dirs_before_hydra(argv: Sequence[str], keys: Sequence[str]) -> None:
    """Exit with a config error if a folder given on the command line as ``key=path`` (one of
    ``keys``: ``out_dir``, ``hydra.run.dir``) is a file or lies under one. Hydra creates its
    run folder before the app's checks run, so such a path ended in a traceback
    (``NotADirectoryError``) instead of :func:`validate_compare`'s line."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") not in keys or not value:
            continue
        path = Path(value).expanduser()
        blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            error = ConfigError(
                key, value, f"a writable directory ({blocking} is a file, not a folder)"
            )
            print(f"config error: {error}", file=sys.stderr)
            raise SystemExit(2)


def check_jobs_before_hydra(
    argv: Sequence[str],
    config_name: str,
    check: Callable[[DictConfig], None],
    distinct: str | None = None,
) -> bool:
    """Run ``check`` on the config of every job the command line names (each combination of a
    ``-m`` sweep's values), composed from ``experiments/conf``, and exit with its config error
    before hydra starts: hydra creates each job's folder (and writes its ``.hydra/`` files)
    before the job's own checks run, so a refused value left a stray folder, or rewrote the
    ``.hydra/`` files of an earlier run in the same folder, and in a sweep the jobs before the
    bad one had run. A command line this does not read (hydra flags other than ``-m``, sweeps
    it cannot list, such as an optuna interval) is left to the jobs' own checks. ``distinct``:
    a key whose value no two jobs may share (``out_dir`` of ``compare``: the second job of a
    sweep wiped the first one's records and wrote its report section over the first's).
    Returns whether every job was checked."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = [a for a in argv if a not in ("-m", "--multirun")]
    if any(a.startswith("-") for a in overrides):
        return False
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        choices = [
            [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
            if o.is_sweep_override()
            else [o.input_line]
            for o in parsed
            if not o.key_or_group.startswith("hydra")  # hydra's own keys: not the job's
        ]
    except (HydraException, OmegaConfBaseException, ValueError):
        return False  # hydra says what is wrong with the command line itself
    taken: dict[str, int] = {}

    def compose_in(job: list[str]) -> DictConfig:
        return compose(config_name, overrides=job)

    with initialize_config_dir(str(Path(__file__).with_name("conf")), version_base=None):
        for number, job in enumerate(itertools.product(*choices)):
            try:
                cfg = compose(config_name, overrides=list(job))
            except (HydraException, OmegaConfBaseException):
                return False  # an unknown group or key: hydra's own error, as it starts
            exit_on_error(check, cfg)
            exit_on_error(
                lambda cfg, job=list(job): check_added_keys(job, config_name, compose_in, cfg), cfg
            )
            if distinct is None:
                continue
            try:
                where = str(Path(str(_get(cfg, distinct))).expanduser().resolve())
            except ConfigError:
                return False  # resolved only by hydra (${hydra:job.num}): distinct per job
            if where in taken:
                print(
                    f"config error: {distinct} = {where!r}: refused: jobs {taken[where]} and "
                    f"{number} of the sweep both write it (the second would wipe the first's "
                    f"records); give each job its own {distinct}",
                    file=sys.stderr,
                )
                raise SystemExit(2)
            taken[where] = number
    return True


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same inode where both exist (a hard link, a
    case-insensitive file system), else the same absolute path with links and ``..`` resolved."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


Named = Iterable[tuple[str, Path | None]]


def output_clash(outputs: Named, inputs: Named = ()) -> str | None:
    """Why a command must not write its ``outputs``, or ``None``: one of them is another output
    (two writes to one file, the second replacing the first) or one of the ``inputs`` (the
    command would replace what it reads, a checkpoint or its sidecar, a record, a member's
    weights, and still exit 0). Each entry is ``(what, path)``, ``what`` naming the option
    (``"--write"``, ``"--out's sidecar"``); a ``None`` path is an option not given. Checked
    before any work, as ``assocmem-detect`` refuses a report path that is one of its inputs,
    the checkpoint or its sidecar; the caller turns the line into a usage error
    (``parser.error``: exit status 2)."""
    outs = [(what, Path(p)) for what, p in outputs if p is not None]
    ins = [(what, Path(p)) for what, p in inputs if p is not None]
    for i, (what, path) in enumerate(outs):
        for other, other_path in [*outs[:i], *ins]:
            if same_file(path, other_path):
                same = "" if str(path) == str(other_path) else f" ({other_path})"
                return (
                    f"{what} {path} is also {other}{same}: writing it would replace that; "
                    "give it a path of its own"
                )
    return None


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as e:  # noqa: BLE001 (an interpolation that cannot resolve, a missing ???)
        raise ConfigError(key, "<unresolvable>", f"a value ({type(e).__name__}: {e})") from None


def _int(cfg: DictConfig, key: str, minimum: int) -> int:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, f"an integer >= {minimum}")
    return value


def _positive(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, value, "a finite number > 0")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(key, value, "a finite number > 0")
    return float(value)


def _bool(cfg: DictConfig, key: str) -> bool:
    value = _get(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
    return value


def _names(cfg: DictConfig, key: str, allowed: set[str] | tuple[str, ...]) -> list[str]:
    value = _get(cfg, key)
    if not isinstance(value, (list, ListConfig)) or not value:
        raise ConfigError(key, value, f"a non-empty list from {sorted(allowed)}")
    unknown = [v for v in value if v not in allowed]
    if unknown:
        raise ConfigError(key, unknown, f"names from {sorted(allowed)}")
    if len(set(value)) != len(value):  # a repeat ran its whole protocol twice, one row kept
        raise ConfigError(key, list(value), "distinct names")
    return list(value)


def _writable_dir(key: str, value: Any, directory: Path | None = None) -> None:
    """The directory ``value`` (or ``directory``, where ``value`` is a file to be written there)
    can be written, or made where its nearest existing parent can be written: a temporary file
    written there and removed. Nothing is created: a refused comparison left its report's
    folders (``docs/results``) behind in the working directory."""
    what = "a writable directory" if directory is None else "a path in a writable directory"
    try:
        path = Path(directory if directory is not None else value).expanduser().absolute()
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ConfigError(key, value, f"{what} ({existing} is a file)")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except (OSError, TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        reason = getattr(e, "strerror", None) or str(e)
        raise ConfigError(key, value, f"{what} ({reason})") from None


def _writable_file(key: str, value: Any) -> None:
    """An existing ``value`` must be a file this process may rewrite (it is written after the
    whole sweep: a folder or a read-only file must not end hours of runs in a traceback)."""
    path = Path(str(value)).expanduser()
    if path.is_dir():
        raise ConfigError(key, value, f"a markdown file ({path} is a directory)")
    if path.exists():
        try:
            with path.open("r+"):  # opened for writing, nothing written
                pass
        except OSError as e:
            raise ConfigError(key, value, f"a writable file ({e.strerror or e})") from None


# The keys ``experiments.compare`` sets in every run it composes (``compare.run_config``).
PROTOCOL_KEYS = ("task", "optimizer", "optimizer.lr", "seed", "progress", "target")
_PROTOCOL_LEAVES = {k.split(".")[-1] for k in PROTOCOL_KEYS}


_INTERPOLATION = re.compile(r"^\$\{(\.*)([A-Za-z_][\w.]*)\}$")


def _raw(container: Any, key: str) -> Any:
    """The value at the dotted ``key`` of a config as a plain container, its interpolations
    unresolved; ``None`` where there is none."""
    for part in key.split("."):
        if isinstance(container, dict):
            container = container.get(part)
        elif isinstance(container, list) and part.isdigit() and int(part) < len(container):
            container = container[int(part)]
        else:
            return None
    return container


def protocol_key(key: str, run: DictConfig | None = None) -> str | None:
    """The key of :data:`PROTOCOL_KEYS` that an override of ``key`` would set, or ``None``:
    the key itself, a ``<...>.factory.<protocol key>`` (what the optimizer is built with:
    ``optimizer.factory.lr`` is ``${..lr}`` in every ``conf/optimizer`` file) or, in the
    composed ``run``, a key whose value is an interpolation of a protocol key (followed
    through chains of them). An override of such a key won over the tuned lr (or the seed)
    in every run, while the report printed the tuned one."""
    if key in PROTOCOL_KEYS:
        return key
    parts = key.split(".")
    if len(parts) >= 2 and parts[-2] == "factory" and parts[-1] in _PROTOCOL_LEAVES:
        return next(k for k in PROTOCOL_KEYS if k.split(".")[-1] == parts[-1])
    if run is None:
        return None
    plain = OmegaConf.to_container(run, resolve=False)
    node = _raw(plain, key)
    if isinstance(node, dict):
        # a whole node (optimizer.factory={...}) replaces every key under it: the tuned lr's
        # ${..lr} too, which the run then never saw while the report printed the tuned one
        for sub in node:
            if (target := protocol_key(f"{key}.{sub}", run)) is not None:
                return target
        return None
    for _ in range(16):  # a chain of interpolations, never a cycle
        match = _INTERPOLATION.match(str(_raw(plain, key))) if key else None
        if match is None:
            return None
        dots, path = len(match.group(1)), match.group(2)
        parts = key.split(".")[:-1]  # the node's container; each dot past the first goes up
        key = ".".join([*parts[: len(parts) - (dots - 1)], path] if dots else [path])
        if key in PROTOCOL_KEYS:
            return key
    return None


def _check_override_keys(overrides: Iterable[str], run: DictConfig | None = None) -> None:
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key == "hydra" or key.startswith("hydra."):
            # each run is composed, never launched by hydra: hydra.run.dir=... did nothing
            raise ConfigError(
                "overrides", o, "keys of a run's config (hydra's own settings are not used)"
            )
        if (target := protocol_key(key, run)) is not None:
            # the protocol sets these per run (the tuned lr, each seed, each optimizer); an
            # override would win over them in every run and the report would not say so
            via = "" if target == key else f"; overriding {key} overrides {target}"
            raise ConfigError(
                "overrides", o, f"overrides of keys the protocol does not set {PROTOCOL_KEYS}{via}"
            )


def _check_unknown_keys(cfg: DictConfig, config_name: str) -> None:
    """Refuse a top-level key the config file does not have (``+lr_factor=[1,2]`` for
    ``lr_factors``, ``+step=5``): hydra adds a key given with ``+``, and the run went on with
    the defaults, exit 0. Keys inside a group (``optimizer.factory.*``: a preset refuses what
    it does not take) and ``variants`` (free by design) are not this check's."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / f"{config_name}.yaml"))
    groups = [next(iter(d)) for d in raw.pop("defaults", []) if isinstance(d, dict)]
    known = set(raw) | set(groups)
    if extra := sorted(set(cfg) - known - {"hydra"}):
        raise ConfigError(
            extra[0], _get(cfg, extra[0]), "", refused=f"not a key of conf/{config_name}.yaml "
            f"(a typo? its keys: {', '.join(sorted(known))})"
        )  # fmt: skip


# Nodes whose keys their reader checks, so an override may add one: a preset's keyword arguments
# and a split's rest-group options (the optimizer refuses what it does not take, _check_optimizer),
# a task's constructor arguments (build_task: an unknown one is a TypeError), a split (whole:
# _check_split), ``variants`` (free by design), hydra's own settings; and ``report.command``,
# which compare reads when set (conf/experiment/demo.yaml sets it).
ADDABLE = {
    "config": ("optimizer.factory", "optimizer.split", "task.build", "hydra"),
    "compare": ("variants", "report.command", "hydra"),
    "meta_train": ("hydra",),
}


_ABSENT = object()


def check_added_keys(
    overrides: Iterable[str],
    config_name: str,
    compose_with: Callable[[list[str]], DictConfig] | None = None,
    composed: DictConfig | None = None,
) -> None:
    """Refuse an override that adds a nested key the config does not have (``+task.step=5`` for
    ``task.steps``, ``++data.photo=...``, ``++task={stepz: 3}``): hydra adds a key given with
    ``+`` or ``++`` and the run went on with the default, exit 0. A key given with ``+`` is new
    by hydra's rule (it refuses ``+`` on an existing key); one given with ``++`` (add or
    override) is new when the config composed from the other overrides lacks it, and a mapping
    given with ``++`` adds the keys its node composed without it lacks (``compose_with`` composes
    a list of overrides; without it only ``+`` keys are checked; ``composed``: the config of all
    of ``overrides``, where the caller has it). Top-level keys are
    :func:`_check_unknown_keys`'s (a group such as ``+experiment=demo`` is one); keys under
    :data:`ADDABLE` are their readers'."""
    overrides = [str(o) for o in overrides]
    addable = ADDABLE.get(config_name, ())

    def free(key: str) -> bool:
        return any(key == node or key.startswith(f"{node}.") for node in addable)

    def compose(job: list[str]) -> DictConfig | None:
        if compose_with is None:
            return None
        try:
            return compose_with(job)
        except Exception:  # noqa: BLE001 (hydra's own error for these overrides, as it starts)
            return None

    for o in overrides:
        key, _, value = o.partition("=")
        if not key.startswith("+"):
            continue
        forced, key = key.startswith("++"), key.lstrip("+")
        if free(key) or any(x.split("=", 1)[0] == f"~{key}" for x in overrides):
            continue  # a reader checks it, or ~key deleted it and ++key sets it again
        base = compose([x for x in overrides if x is not o])
        there = None if base is None else OmegaConf.select(base, key, default=_ABSENT)
        if forced and (base is None or there is not _ABSENT):
            # ++ overrode a key the config has (or cannot be told apart from that): a mapping
            # may still add keys inside it
            full = (
                None if base is None else composed if composed is not None else compose(overrides)
            )
            added = _added_keys(
                None if full is None else OmegaConf.select(full, key, default=None),
                there, key, free,
            )  # fmt: skip
            if added:
                raise ConfigError(added[0], value, "", refused=_added(config_name, there))
            continue
        if "." not in key or there not in (None, _ABSENT):
            continue  # top level: _check_unknown_keys; + on a key there: hydra refuses it
        node = None if base is None else OmegaConf.select(base, key.rsplit(".", 1)[0], default=None)
        raise ConfigError(key, value, "", refused=_added(config_name, node))


def _added(config_name: str, node: Any) -> str:
    keys = f" (its keys: {', '.join(map(str, node))})" if isinstance(node, DictConfig) else ""
    return (
        f"adds a key conf/{config_name}.yaml and its groups do not have{keys}: a typo? hydra "
        "adds it and nothing reads it"
    )


def _added_keys(new: Any, old: Any, prefix: str, free: Callable[[str], bool]) -> list[str]:
    """The keys under ``new`` (a composed node) that ``old`` (the same node without the
    override) lacks, outside the ``free`` ones, depth first."""
    if not isinstance(new, DictConfig) or not isinstance(old, DictConfig):
        return []
    out = []
    for k in new:
        path = f"{prefix}.{k}"
        if free(path):
            continue
        if k not in old:
            out.append(path)
        else:
            out += _added_keys(new._get_node(k), old._get_node(k), path, free)
    return out


def check_job_overrides(config_name: str) -> Callable[[DictConfig], None]:
    """:func:`check_added_keys` on the overrides of the hydra job running now, for
    :func:`exit_on_error`: a command line :func:`check_jobs_before_hydra` leaves to the job
    (hydra flags) is checked there."""

    def check(cfg: DictConfig) -> None:
        from hydra import compose
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():  # main called as a function: no command line
            return
        check_added_keys(
            HydraConfig.get().overrides.task,
            config_name,
            lambda job: compose(config_name, overrides=job),
            cfg,  # the job's config: all of its overrides
        )

    return check


def _group_names(group: str) -> set[str]:
    return {p.stem for p in (CONF / group).glob("*.yaml")}


def validate_run(cfg: DictConfig) -> None:
    """Checks of ``conf/config.yaml`` (one run of ``python -m experiments.run``)."""
    _int(cfg, "seed", 0)
    _int(cfg, "task.steps", 0)  # 0: a task with nothing to train (nopretrain_probe)
    _int(cfg, "task.eval_every", 1)
    _bool(cfg, "progress")
    target = _get(cfg, "target")
    if target is not None and (
        isinstance(target, bool)
        or not isinstance(target, (int, float))
        or not math.isfinite(target)
    ):
        raise ConfigError("target", target, "null or a finite number")
    lr = _positive("optimizer.lr", _get(cfg, "optimizer.lr"))
    factory_lr = _get(cfg, "optimizer.factory.lr")
    if factory_lr is not None and factory_lr != lr:
        # the run trained at factory.lr and named optimizer.lr in its folder, log and summary
        raise ConfigError(
            "optimizer.factory.lr",
            factory_lr,
            "",
            refused=f"it is ${{..lr}} (optimizer.lr = {lr}, which the run's folder and records "
            "name): set optimizer.lr",
        )
    _check_unknown_keys(cfg, "config")
    _check_optimizer(cfg)
    if _get(cfg, "task.build.data") is not None:  # a forensic task: it reads cfg.data
        _check_data(cfg)


class _DummyTask:
    """Two layers: a hidden matrix and a head, so a split config builds both of its groups."""

    def __init__(self) -> None:
        from torch import nn

        self.model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))

    def parameters(self):
        return list(self.model.parameters())


def _check_split(cfg: DictConfig) -> None:
    split = _get(cfg, "optimizer.split")
    if split is None:
        return
    if not isinstance(split, DictConfig) or set(split) != {"rest", "rest_lr_ratio"}:
        raise ConfigError(
            "optimizer.split", split, "null or {rest: {memory: ..., ...}, rest_lr_ratio: > 0}"
        )
    _positive("optimizer.split.rest_lr_ratio", _get(cfg, "optimizer.split.rest_lr_ratio"))
    if not isinstance(_get(cfg, "optimizer.split.rest"), DictConfig):
        raise ConfigError("optimizer.split.rest", split.rest, "a mapping of group options")


def _check_optimizer(cfg: DictConfig) -> None:
    """Build the optimizer on a dummy two-layer model, so its own argument checks (every preset
    validates its hyperparameters eagerly, a split's rest group too) run before the task is
    built."""
    from experiments.run import optimizer_factory  # run.py imports this module

    _check_split(cfg)
    try:
        task = _DummyTask()
        optimizer_factory(cfg, task)(task.parameters())
    except Exception as e:  # noqa: BLE001 (hydra wraps the optimizer's own error)
        cause = e.__cause__ or e
        message = str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause)
        raise ConfigError(
            "optimizer.factory", _get(cfg, "optimizer.name"), "", refused=message
        ) from None


def _check_data(cfg: DictConfig) -> None:
    from assocmem.forensic.data import FAMILY_NAMES, default_cache_dir

    _bool(cfg, "data.tiny")
    patch = _int(cfg, "data.patch_size", 8)
    if patch % 4:
        raise ConfigError("data.patch_size", patch, "a multiple of 4, >= 8")
    _int(cfg, "data.seed", 0)
    train = _names(cfg, "data.train_families", FAMILY_NAMES)
    heldout = _names(cfg, "data.heldout_families", FAMILY_NAMES)
    if set(train) & set(heldout):
        raise ConfigError(
            "data.heldout_families", heldout, f"no family also in train_families {train}"
        )
    cache = _get(cfg, "data.cache_dir")
    _writable_dir("data.cache_dir", default_cache_dir() if cache is None else cache)


def _variants(cfg: DictConfig) -> dict[str, list[str]]:
    value = _get(cfg, "variants")
    expected = "a mapping of names to non-empty lists of optimizer configs"
    if not isinstance(value, DictConfig):
        raise ConfigError("variants", value, expected)
    out = {}
    for name, configs in value.items():
        out[str(name)] = _names(cfg, f"variants.{name}", _group_names("optimizer"))
        if len(set(configs)) != len(configs):
            raise ConfigError(f"variants.{name}", list(configs), "distinct configs")
    return out


def validate_meta_train(cfg: DictConfig) -> None:
    """The switches and output paths of ``conf/meta_train.yaml``, checked before meta-training
    starts: the export was written only after the whole run, so an ``export`` ending in
    ``.json`` (its own sidecar) or naming a folder, or whose sidecar is a folder, ended the run
    there (with ``checkpoint=null``, its result lost); a ``checkpoint`` that could not be
    written failed at the first save, ``train.checkpoint_every`` meta-steps in; an ``export`` at
    the ``checkpoint`` path replaced the training state with an export, so the same command
    could no longer resume. ``resume`` and ``progress`` must be booleans: ``resume=no`` (a
    string to Hydra) resumed."""
    from assocmem.meta import LearnedConfig
    from assocmem.meta.train import TrainConfig
    from assocmem.storage import sidecar_path

    _check_unknown_keys(cfg, "meta_train")  # +resum=false: it resumed, exit 0
    for key, kind in (("learned", LearnedConfig), ("train", TrainConfig)):
        node = _get(cfg, key)
        try:  # an unknown or bad field ended the job in a traceback
            kind.from_dict(OmegaConf.to_container(node, resolve=True))
        except (TypeError, ValueError) as e:
            raise ConfigError(key, "{...}", "", refused=str(e).splitlines()[0]) from None
    _bool(cfg, "resume")
    _bool(cfg, "progress")
    _int(cfg, "threads", 1)
    export, checkpoint = _get(cfg, "export"), _get(cfg, "checkpoint")
    if checkpoint:
        where = Path(str(checkpoint)).expanduser()
        if where.is_dir():
            raise ConfigError("checkpoint", checkpoint, f"a file path ({where} is a directory)")
        _writable_dir("checkpoint", checkpoint, where.parent)
    if not export:
        return
    path = Path(str(export)).expanduser()
    if path.suffix.lower() == ".json":
        raise ConfigError("export", export, "", refused="a memory ending in .json would be its own "
                          "sidecar")  # fmt: skip
    if path.is_dir():
        raise ConfigError("export", export, f"a file path ({path} is a directory)")
    if sidecar_path(path).is_dir():
        raise ConfigError("export", export, f"a path whose sidecar {sidecar_path(path)} is no "
                          "directory")  # fmt: skip
    _writable_dir("export", export, path.parent)
    clash = output_clash(
        [("export", path), ("export's sidecar", sidecar_path(path))],
        [("checkpoint", Path(str(checkpoint)).expanduser() if checkpoint else None)],
    )
    if clash:
        raise ConfigError("export", export, "", refused=clash)


# what a comparison writes under its out_dir besides the report: its records
RECORD_SUFFIXES = (".json", ".jsonl", ".yaml")


def validate_compare(cfg: DictConfig) -> None:
    """Checks of ``conf/compare.yaml``, then of every run it will make (composed with its
    overrides), so a bad value fails now rather than hours into the sweep.

    Must run inside a hydra app (``compose`` needs the initialised config search path)."""
    from hydra import compose

    from experiments.report import check_markers, check_section_name

    try:
        check_section_name(_get(cfg, "name"))
    except ValueError:
        raise ConfigError(
            "name",
            _get(cfg, "name"),
            "letters, digits, '.', '_' or '-' (a section's name), not 'contents'",
        ) from None
    _check_unknown_keys(cfg, "compare")
    tasks = _names(cfg, "tasks", _group_names("task"))
    variants = _variants(cfg)
    optimizers = _names(cfg, "optimizers", _group_names("optimizer") | set(variants))
    baseline = _get(cfg, "baseline")
    if baseline not in _group_names("optimizer") | set(variants):
        raise ConfigError("baseline", baseline, f"one of {sorted(_group_names('optimizer'))}")
    if unused := sorted(set(variants) - {baseline, *optimizers}):
        raise ConfigError("variants", unused, "keys that name an entry of optimizers")
    factors = _get(cfg, "lr_factors")
    if not isinstance(factors, (list, ListConfig)) or not factors:
        raise ConfigError("lr_factors", factors, "a non-empty list of finite numbers > 0")
    for f in factors:
        _positive("lr_factors", f)
    if len(set(map(float, factors))) != len(factors):
        raise ConfigError("lr_factors", list(factors), "distinct factors")
    extensions = _int(cfg, "lr_extensions", 0)
    if extensions and len(factors) < 2:
        raise ConfigError(
            "lr_extensions", extensions, "0 for a one-point LR grid (no spacing to extend by)"
        )
    _int(cfg, "step_cost.samples", 1)
    _int(cfg, "step_cost.span", 1)
    tuning_seed = _int(cfg, "tuning_seed", 0)
    seeds = _get(cfg, "seeds")
    if not isinstance(seeds, (list, ListConfig)) or not seeds:
        raise ConfigError("seeds", seeds, "a non-empty list of integers >= 0")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError("seeds", s, "integers >= 0")
    # A repeated seed counts one run twice (a spread of 0); the tuning seed's runs chose the
    # lr, so reporting one as an evaluation seed scores the tuning on itself.
    if len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", list(seeds), "distinct seeds")
    if tuning_seed in seeds:
        raise ConfigError("seeds", list(seeds), f"seeds other than tuning_seed ({tuning_seed})")
    overrides = _get(cfg, "overrides")
    if not isinstance(overrides, (list, ListConfig)) or not all(
        isinstance(o, str) for o in overrides
    ):
        raise ConfigError("overrides", overrides, 'a list of "key=value" strings')
    _check_override_keys(overrides)
    _writable_dir("out_dir", _get(cfg, "out_dir"))
    markdown = _get(cfg, "report.markdown")
    where = Path(str(markdown)).expanduser().resolve()
    out_dir = Path(str(_get(cfg, "out_dir"))).expanduser().resolve()
    if where.is_relative_to(out_dir) and where.suffix in RECORD_SUFFIXES:
        # the report was written into the comparison's own records (plan.json, a run's
        # summary), which the report command then could not read
        raise ConfigError(
            "report.markdown",
            markdown,
            f"a markdown file, not one of the runs' records under "
            f"out_dir ({', '.join(RECORD_SUFFIXES)})",
        )
    _writable_dir("report.markdown", markdown, Path(str(markdown)).parent)
    _writable_file("report.markdown", markdown)
    try:  # markers the report could not replace ended the sweep in a traceback, after it
        check_markers(Path(str(markdown)).expanduser(), _get(cfg, "name"))
    except ValueError as e:
        raise ConfigError(
            "report.markdown", markdown, f"a file whose section can be replaced ({e})"
        ) from None
    _writable_dir("report.plots_dir", _get(cfg, "report.plots_dir"))
    for task in tasks:
        configs = [c for o in [baseline, *optimizers] for c in variants.get(o, [o])]
        for optimizer in dict.fromkeys(configs):
            run = [f"task={task}", f"optimizer={optimizer}", *overrides]
            # a key that is an interpolation of one the protocol sets, in this run's config
            _check_override_keys(overrides, compose(config_name="config", overrides=run[:2]))
            check_added_keys(
                overrides, "config", lambda job, g=run[:2]: compose("config", overrides=g + job)
            )
            try:
                run_cfg = compose(config_name="config", overrides=run)
            except Exception as e:  # noqa: BLE001 (hydra's override grammar and key errors)
                first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
                raise ConfigError(
                    "overrides", list(overrides), f"valid overrides ({first})"
                ) from None
            if _get(run_cfg, "task.steps") == 0:  # every lr tied, and a "best" was chosen
                raise ConfigError(
                    "overrides", list(overrides), "task.steps >= 1 in a comparison (0 steps: "
                    f"every lr of task {task} ties on the untrained model)"
                )  # fmt: skip
            base_lr = run_cfg.optimizer.lr
            # compare.tune runs the lr base * factor at 6 significant digits: two factors that
            # round together ran one lr twice into one folder and shrank the grid (an audit)
            if len({f"{base_lr * float(f):.6g}" for f in factors}) != len(factors):
                raise ConfigError(
                    "lr_factors",
                    list(factors),
                    f"factors whose learning rates differ at 6 significant digits ({optimizer}'s "
                    f"base lr is {base_lr})",
                )
            if extensions:
                # an extension multiplies the edge factor by the grid's outer ratio each time:
                # factors [1e-200, 1] passed here, then ran a tuning run at lr 0 and ended the
                # sweep in a traceback
                fs = sorted(map(float, factors))
                ends = (fs[0] * (fs[0] / fs[1]) ** extensions,
                        fs[-1] * (fs[-1] / fs[-2]) ** extensions)  # fmt: skip
                for side, end in zip(("smallest", "largest"), ends, strict=True):
                    lr = base_lr * end
                    if not (math.isfinite(lr) and float(f"{lr:.6g}") > 0):
                        raise ConfigError(
                            "lr_factors",
                            list(factors),
                            f"a grid whose {extensions} extension(s) keep the lr a finite "
                            f"number > 0 (its {side} lr would be {lr:.6g} for {optimizer}, "
                            f"base lr {base_lr})",
                        )
            try:
                validate_run(run_cfg)
            except ConfigError as e:
                raise ConfigError(
                    f"{e.key} (task={task} optimizer={optimizer})",
                    e.value,
                    e.expected,
                    refused=e.refused,
                ) from None
        # the task itself, once: a value only its constructor refuses (task.build.dim=1 on
        # rosenbrock) ended the sweep after every earlier task's runs (a user audit); one build
        # more per task than the sweep makes anyway (one per run)
        try:
            build_task(compose(config_name="config", overrides=[f"task={task}", *overrides]))
        except ConfigError as e:
            raise ConfigError(
                f"{e.key} (task={task})", e.value, e.expected, refused=e.refused
            ) from None
