"""Write a whole output folder atomically: the one place that knows how (no torch here).

`prepare_target` and `check_apart` refuse a target before any work; `write_atomically` builds the
folder in a temporary sibling and renames it into place. A failure leaves nothing half-written
(and no parent folder it created); an earlier folder is moved aside and deleted only once the new
one is in place, and put back if the rename fails, Ctrl-C included. The saved model
(`headcount.models.save`) and the reports (`headcount.report.write`) use it, each with its own
error class, which callers pass as ``error``.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from headcount.errors import HeadcountError, OutputError

Error = type[HeadcountError]


def check_apart(
    target: str | Path,
    source: str | Path,
    what: str = "the model's source",
    *,
    error: Error = OutputError,
) -> None:
    """``error`` when ``target`` is, lies inside, or contains ``source`` (symlinks resolved)."""
    out = Path(target).expanduser().resolve()
    src = Path(source).expanduser().resolve()
    where = (
        "is"
        if out == src
        else "lies inside"
        if src in out.parents
        else "contains"
        if out in src.parents
        else None
    )
    if where is not None:
        raise error(
            f"{Path(target)} {where} {what} {src}, which is never modified; choose another folder"
        )


def prepare_target(
    target: str | Path,
    *,
    marker: str,
    what: str,
    force: bool = False,
    force_flag: str = "force=True",
    error: Error = OutputError,
) -> Path:
    """Check that the folder ``target`` may be written; returns its absolute path. Creates nothing.

    Allowed: a new folder, an empty folder, or (with ``force``) a folder that holds an earlier
    headcount ``what``, recognised by the file ``marker``, and a place where a folder can really
    be created (os.access says yes to root even where nothing can, as in /proc).
    """
    out = Path(target).expanduser().absolute()
    if out.exists():
        if not out.is_dir():
            raise error(f"{out} exists and is not a folder")
        if any(out.iterdir()):
            if not (out / marker).is_file():
                raise error(
                    f"{out} is not empty and holds no headcount {what}; choose another folder"
                )
            if not force:
                raise error(f"{out} already holds a {what}; pass {force_flag} to replace it")
    parent = ancestor = out.parent
    try:
        while not ancestor.exists():
            ancestor = ancestor.parent
        os.rmdir(tempfile.mkdtemp(prefix=".headcount-probe-", dir=ancestor))
    except OSError as exc:
        verb = "write into" if ancestor == parent else "create"
        raise error(f"cannot {verb} {parent}: {exc.strerror or exc}") from exc
    return out


def write_atomically(
    target: Path, fill: Callable[[Path], None], *, error: Error = OutputError
) -> Path:
    """Run ``fill(folder)`` on a new temporary sibling of ``target``, give what it wrote the usual
    permissions (0666/0777 less the umask: mkstemp and mkdtemp make them private), then rename it
    to ``target``, replacing an earlier folder there. ``target`` comes from `prepare_target`.

    On any failure the sibling and the parent folders made for it are removed; an `OSError`
    becomes ``error``, other exceptions pass unchanged.
    """
    made = _make_parents(target.parent, error)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        fill(tmp)
        _usual_permissions(tmp)
        _swap_into_place(tmp, target)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already if the swap worked
        _remove_empty(made)
        if isinstance(exc, OSError) and not isinstance(exc, HeadcountError):
            # a full disk, a permission changed under us
            raise error(f"cannot write {target}: {exc.strerror or exc}") from exc
        raise
    return target


def _make_parents(folder: Path, error: Error) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created, innermost first."""
    missing, above = [], folder
    try:
        while not above.exists():
            missing.append(above)
            above = above.parent
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_empty(missing)
        raise error(f"cannot create {folder}: {exc.strerror or exc}") from exc
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # innermost first; stops at one that holds anything
        try:
            folder.rmdir()
        except OSError:
            return


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for a moment, in every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _usual_permissions(root: Path) -> None:
    """Folders 0777 and files 0666 (0777 if executable) less the umask; links are left alone."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                continue
            full = 0o777 if stat.S_ISDIR(mode) or mode & stat.S_IXUSR else 0o666
            os.chmod(path, full & ~mask)


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an earlier folder there is deleted only after that worked,
    and put back if it failed. SIGINT, SIGTERM and SIGHUP wait until the swap is over."""
    with _signals_deferred():
        if not (target.exists() and any(target.iterdir())):
            if target.exists():
                target.rmdir()
            os.rename(tmp, target)
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        old = aside / target.name
        try:
            os.rename(target, old)
        except BaseException:
            aside.rmdir()
            raise
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old, target)  # should this fail too, the old folder stays in `aside`
            aside.rmdir()
            raise
        shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP (main thread, Python-level handlers), then deliver them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        num = getattr(signal, name, None)
        if num is not None and signal.getsignal(num) is not None:  # None: set outside Python
            previous[num] = signal.signal(num, lambda n, _frame: caught.append(n))
    try:
        yield
    finally:
        for num, handler in previous.items():
            signal.signal(num, handler)
        for num in caught:
            signal.raise_signal(num)
