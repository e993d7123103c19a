"""The gateway's model store: assigned model versions on disk, and which of them run.

Each version the registry assigned lives in its own directory, named for its content:
``<name>-<version>-<artifact sha256[:12]>``. A directory appears there only whole: an
artifact is unpacked into a ``.tmp-*`` directory of the store and renamed, so a process
killed while unpacking leaves a temporary directory (removed at the next start), never a
half-written version. A version already there is reused only if packing its files again
gives the announced artifact (``contract.artifact.pack`` is deterministic) and a trusted key
verifies the signature over it: a file changed on disk since is caught like tampered bytes.

``current.json`` names what runs (live directory, shadow directory, the assignment's id),
written only once the models passed their self-test; ``previous.json`` keeps what ran
before. Both are written atomically (temporary file, fsync, ``os.replace``, fsync of the
directory), so after a power cut or SIGKILL each is either the old or the new whole file.
At start the agent takes the first of current, previous and ``model.dir`` whose models load
and pass their self-test (:func:`choose`).

A gateway has little disk: after each swap, the versions neither pointer names are removed
(:meth:`ModelStore.prune`), except those being prepared (:meth:`ModelStore.hold`). What
is left is what the agent can start on, and what a rollback to the previous version takes
without a download.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.inference import OnnxModel
from contract import artifact as artifacts
from contract import wire
from contract.card import CardError, ModelCard

__all__ = ["CURRENT", "PREVIOUS", "ModelStore", "Pointer", "Start", "choose", "differences",
           "write_atomic"]

logger = logging.getLogger(__name__)

CURRENT = "current.json"
PREVIOUS = "previous.json"
_TMP = ".tmp-"
_DIR_NAME = r"^[A-Za-z0-9_.-]{1,200}$"
_VERSION_DIR = re.compile(r"^[^.].*-[0-9a-f]{12}$")  # dir_name's shape: nothing else is pruned


class Pointer(BaseModel):
    """What runs: directories of the store (names, not paths, so a store can be moved)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    live: str = Field(pattern=_DIR_NAME)
    shadow: str | None = Field(None, pattern=_DIR_NAME)
    assignment: str | None = None
    at: datetime


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file whole."""
    fd, tmp = tempfile.mkstemp(prefix=_TMP, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelStore:
    """The store directory ``root``, created with the first version put in it: an agent
    that is never assigned a model never writes there."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()

    def dir_name(self, art: wire.Artifact) -> str:
        return f"{art.name}-{art.version}-{art.sha256[:12]}"

    def path(self, name: str) -> Path:
        return self.root / name

    def clean(self) -> list[str]:
        """Remove what a killed unpack or pointer write left; return the names removed."""
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        for p in sorted(self.root.glob(_TMP + "*")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
        return removed

    # --- pointers ----------------------------------------------------------------------------

    def pointer(self, which: str = CURRENT) -> tuple[Pointer | None, str]:
        """The pointer file ``which`` and, when it is None, why ("" when there is none)."""
        path = self.root / which
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None, ""
        except OSError as exc:
            return None, f"{path} is unreadable: {exc}"
        try:
            return Pointer.model_validate_json(raw), ""
        except ValidationError as exc:
            first = exc.errors()[0]
            return None, f"{path} is not a model pointer: {first['msg']}"

    def point(self, pointer: Pointer) -> None:
        """Make ``pointer`` current; the current one, if readable, becomes the previous."""
        self.root.mkdir(parents=True, exist_ok=True)
        old, _ = self.pointer(CURRENT)
        if old is not None and old != pointer:
            write_atomic(self.root / PREVIOUS, old.model_dump_json().encode())
        write_atomic(self.root / CURRENT, pointer.model_dump_json().encode())

    # --- versions ------------------------------------------------------------------------------

    def hold(self, names: Iterable[str]) -> None:
        """Keep the directories ``names`` from :meth:`prune` until as many :meth:`release`
        calls: versions being prepared, or prepared and not swapped in yet (any thread)."""
        with self._lock:
            self._held.update(names)

    def release(self, names: Iterable[str]) -> None:
        with self._lock:
            self._held.subtract(names)
            self._held = +self._held  # drops the names no longer held

    def prune(self) -> list[tuple[str, int]]:
        """Remove the versions that neither ``current.json`` nor ``previous.json`` names
        (live or shadow) and none holds; return each removed (name, bytes). Nothing is
        removed while a pointer file is unreadable: it may name any of them."""
        with self._lock:
            keep = set(self._held)
            for which in (CURRENT, PREVIOUS):
                pointer, problem = self.pointer(which)
                if problem:
                    logger.warning("model store: nothing removed: %s", problem)
                    return []
                if pointer is not None:
                    keep.update(n for n in (pointer.live, pointer.shadow) if n is not None)
            if not self.root.is_dir():
                return []
            removed = []
            for path in sorted(self.root.iterdir()):
                if path.name in keep or not _VERSION_DIR.match(path.name) or \
                        not path.is_dir() or path.is_symlink():
                    continue
                size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                self._discard(path)
                removed.append((path.name, size))
        if removed:
            logger.info("model store: removed %d version(s) no pointer names, %.1f kB: %s",
                        len(removed), sum(b for _, b in removed) / 1e3,
                        ", ".join(f"{n} ({b / 1e3:.1f} kB)" for n, b in removed))
        return removed

    def reuse(self, art: wire.Artifact, keys: list[bytes]) -> Path | None:
        """The version's directory if it is there and still what the registry signed; a
        directory that is not is removed (the caller downloads the artifact again)."""
        path = self.root / self.dir_name(art)
        if not path.is_dir():
            return None
        try:
            artifacts.verify(keys, artifacts.pack(path), name=art.name, version=art.version,
                             sha256=art.sha256, signature=art.signature)
        except artifacts.ArtifactError as exc:
            logger.warning("model %s in the store no longer matches its artifact (%s): it is "
                           "downloaded again", path.name, exc)
            self._discard(path)
            return None
        return path

    def install(self, art: wire.Artifact, data: bytes) -> Path:
        """Unpack verified artifact bytes into the version's directory, whole or not at all."""
        final = self.root / self.dir_name(art)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP, dir=self.root))
        try:
            artifacts.unpack(data, tmp / "model")
            _fsync_dir(tmp / "model")
            if final.exists():
                self._discard(final)
            os.rename(tmp / "model", final)
            _fsync_dir(self.root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _discard(self, path: Path) -> None:
        # Renamed first: a kill during the removal leaves a temporary name, not a half-gone
        # version under its real one.
        aside = Path(tempfile.mkdtemp(prefix=_TMP, dir=self.root)) / "old"
        os.rename(path, aside)
        shutil.rmtree(aside.parent, ignore_errors=True)


def differences(running: ModelCard, new: ModelCard) -> list[str]:
    """What in ``new`` this agent cannot serve with the source and windows it has for
    ``running``; empty when it can.

    >>> from pathlib import Path
    >>> card = ModelCard.load(Path(__file__).parents[1] / "models" / "cmapss_fd001")
    >>> differences(card, card)
    []
    """
    out = []
    if new.channel_names != running.channel_names:
        out.append(f"card input channels differ (running {running.channel_names}, "
                   f"assigned {new.channel_names})")
    if (new.window.size, new.window.hop) != (running.window.size, running.window.hop):
        out.append(f"card window differs (running size {running.window.size} hop "
                   f"{running.window.hop}, assigned size {new.window.size} hop "
                   f"{new.window.hop})")
    if new.input.format != running.input.format or new.input.table != running.input.table:
        out.append(f"card input format differs (running {running.input.format}, assigned "
                   f"{new.input.format})")
    return out


@dataclass
class Start:
    """The models an agent starts with: ``pointer`` None when they come from ``model.dir``;
    ``problem`` says why a pointer that exists was not used ("" if none)."""

    live: OnnxModel
    shadow: OnnxModel | None
    pointer: Pointer | None
    problem: str
    tried: Pointer | None = None  # the current pointer, when it was not used


def choose(store: ModelStore, fallback: Path) -> Start:
    """The first of the current pointer, the previous one and ``fallback`` whose models load
    and pass their self-test, each failure logged. A pointer whose cards the fallback's
    source and windows cannot serve is skipped too. ``fallback`` failing raises."""
    for name in store.clean():
        logger.info("model store: removed %s, left by an interrupted unpack or write", name)
    try:
        base: ModelCard | None = ModelCard.load(fallback)
    except CardError as exc:
        # An assigned model that works is still run; model.dir's problem is raised only
        # if it has to run.
        logger.warning("model.dir is unusable (%s): only an assigned model can run", exc)
        base = None
    problems: list[str] = []
    tried: Pointer | None = None
    for which in (CURRENT, PREVIOUS):
        pointer, problem = store.pointer(which)
        if which == CURRENT:
            tried = pointer
        if pointer is None:
            if problem:
                problems.append(problem)
                logger.warning("model store: %s", problem)
            continue
        try:
            live = OnnxModel(store.path(pointer.live))
            shadow = (None if pointer.shadow is None
                      else OnnxModel(store.path(pointer.shadow)))
        except Exception as exc:  # noqa: BLE001 - any load failure means: not this one
            problem = f"{which} names a model that fails to load or self-test: {exc}"
        else:
            diff = [] if base is None else [d for m in (live, shadow) if m is not None
                                            for d in differences(base, m.card)]
            if not diff:
                logger.info("model store: running %s (assignment %s)%s", pointer.live,
                            pointer.assignment,
                            f" with shadow {pointer.shadow}" if pointer.shadow else "")
                return Start(live, shadow, pointer, "; ".join(problems),
                             None if which == CURRENT else tried)
            problem = f"{which} names a model model.dir's source cannot feed: {diff[0]}"
        problems.append(problem)
        logger.warning("model store: %s; trying the next", problem)
    if problems:
        logger.warning("model store: no assigned model usable: running model.dir %s",
                       fallback)
    return Start(OnnxModel(fallback), None, None, "; ".join(problems), tried)

