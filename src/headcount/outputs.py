"""Write a whole output folder atomically: the one place that knows how (no torch here).

`prepare_target` and `check_apart` refuse a target before any work; `write_atomically` builds the
folder in a temporary sibling and renames it into place. A failure leaves nothing half-written
(and no parent folder it created); an earlier folder is moved aside and deleted only once the new
one is in place, and put back if the rename fails, Ctrl-C included. While the folder is written,
SIGTERM and SIGHUP raise `Terminated` (so the temporary folder is removed); during the swap they
wait until it is over. A run killed outright (SIGKILL, power loss) leaves its temporary folders
named with its process id; the next run on the same target restores an earlier folder that was
moved aside and deletes the rest, once that process is gone.

A folder written with a ``listing`` file (the reports: their marker) records every path it holds;
``force`` then replaces it only while it holds nothing else, so a user's own files inside an
earlier report are never deleted. The saved model (`headcount.models.save`) and the reports
(`headcount.report.write`) use this module, each with its own error class, passed as ``error``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from headcount.errors import HeadcountError, OutputError

Error = type[HeadcountError]
LISTING_HEADER = "# headcount wrote the files below; --force replaces a folder holding only these"
PAUSE_ENV = "HEADCOUNT_TEST_PAUSE"  # tests: "fill" or "swap" stops there until a line on stdin


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while an output was being written; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


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
    listing: str | None = None,
    known: tuple[str, ...] = (),
) -> Path:
    """Check that the folder ``target`` may be written; returns its absolute path. Creates nothing
    (an earlier folder a killed run left moved aside is put back first, see `recover`).

    Allowed: a new folder, an empty folder, or (with ``force``) a folder that holds an earlier
    headcount ``what``, recognised by the file ``marker`` and, when ``listing`` names the file
    that lists what it wrote, holding nothing else (a folder from before listings: nothing but
    the top-level names ``known``); and a place where a folder can really be
    created (os.access says yes to root even where nothing can, as in /proc). A symlink is
    refused: the swap would replace the link, not the folder it points to.
    """
    out = Path(target).expanduser().absolute()
    recover(out)
    if out.is_symlink():
        raise error(f"{out} is a symbolic link; give the folder itself")
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
            if listing is not None:
                _check_only_ours(out, listing, known, what, force_flag, error)
    parent = ancestor = out.parent
    try:
        while not ancestor.exists():
            ancestor = ancestor.parent
        os.rmdir(tempfile.mkdtemp(prefix=".headcount-probe-", dir=ancestor))
    except OSError as exc:
        verb = "write into" if ancestor == parent else "create"
        raise error(f"cannot {verb} {parent}: {exc.strerror or exc}") from exc
    return out


def foreign_paths(folder: Path, listing: str, known: tuple[str, ...] = ()) -> list[str] | None:
    """The paths under ``folder`` (relative, sorted) that its ``listing`` file does not name.
    Without a listing (a folder from before listings, or not ours at all): those outside the
    top-level names ``known``, or None when nothing is known."""
    try:
        lines = (folder / listing).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    if not lines or lines[0] != LISTING_HEADER:
        if not known:
            return None
        return [p for p in _walk(folder) if p.split("/")[0] not in known]
    ours = set(lines[1:]) | {listing}
    return [p for p in _walk(folder) if p not in ours]


def _walk(folder: Path) -> list[str]:
    """Every file, folder and link under ``folder`` as a relative POSIX path (links not followed)."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            found.append(Path(root, name).relative_to(folder).as_posix())
    return sorted(found)


def _check_only_ours(
    folder: Path, listing: str, known: tuple[str, ...], what: str, force_flag: str, error: Error
) -> None:
    foreign = foreign_paths(folder, listing, known)
    if foreign is None:
        raise error(
            f"{folder} holds a {what} from an earlier headcount that did not list its files, so "
            f"{force_flag} cannot tell them from yours; delete the folder yourself or choose "
            "another"
        )
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise error(
            f"{folder} holds files headcount did not write ({shown}); move them out of it "
            "or choose another folder"
        )


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def recover(target: str | Path) -> None:
    """Tidy what a killed run left next to ``target``: an earlier folder it had moved aside
    (``.NAME.old-PID-*``) goes back to ``target`` if nothing is there, else it is deleted; its
    half-written ``.NAME.tmp-PID-*`` is deleted. Only for processes that no longer run."""
    target = Path(target).expanduser().absolute()
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(old|tmp)-(\d+)-")
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return
    for entry in sorted(entries, key=lambda p: p.name):
        m = pattern.match(entry.name)
        if m is None or not entry.is_dir() or entry.is_symlink() or _pid_alive(int(m[2])):
            continue
        kept = entry / target.name
        if m[1] == "old" and kept.is_dir() and not os.path.lexists(target):
            os.rename(kept, target)
        shutil.rmtree(entry, ignore_errors=True)


def write_atomically(
    target: Path,
    fill: Callable[[Path], None],
    *,
    error: Error = OutputError,
    listing: str | None = None,
    known: tuple[str, ...] = (),
) -> Path:
    """Run ``fill(folder)`` on a new temporary sibling of ``target``, give what it wrote the usual
    permissions (0666/0777 less the umask: mkstemp and mkdtemp make them private), then rename it
    to ``target``, replacing an earlier folder there. ``target`` comes from `prepare_target`.
    With ``listing``, the file of that name (which ``fill`` may have started) ends with every
    path the folder holds, and an earlier folder is replaced only if it holds nothing its own
    listing does not name (unlisted: nothing outside the top-level names ``known``), checked
    again just before the swap; without ``listing``, an earlier folder is replaced whole.

    On any failure, SIGTERM and SIGHUP included, the sibling and the parent folders made for it
    are removed; an `OSError` becomes ``error``, other exceptions pass unchanged.
    """
    made = _make_parents(target.parent, error)
    tmp = None
    try:
        with _signals_raised():
            recover(target)
            prefix = f".{target.name}.tmp-{os.getpid()}-"
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
            fill(tmp)
            if listing is not None:
                _write_listing(tmp, listing)
            _usual_permissions(tmp)
            _pause("fill")
            _swap_into_place(tmp, target, listing, known, error)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already if the swap worked
        _remove_empty(made)
        if isinstance(exc, OSError) and not isinstance(exc, HeadcountError):
            # a full disk, a permission changed under us
            raise error(f"cannot write {target}: {exc.strerror or exc}") from exc
        raise
    return target


def _write_listing(folder: Path, listing: str) -> None:
    path = folder / listing
    head = path.read_text(encoding="utf-8") if path.exists() else ""
    paths = [p for p in _walk(folder) if p != listing]
    text = "\n".join([LISTING_HEADER, *paths]) + "\n"
    if head:  # what fill wrote there (who wrote it) goes after the list, as comments
        text += "".join(f"# {line}\n" for line in head.splitlines())
    path.write_text(text, encoding="utf-8")


def _pause(step: str) -> None:
    """Tests only: with HEADCOUNT_TEST_PAUSE=step, say so on stderr and wait for a line on
    stdin, so a test can signal or kill the process at exactly this point."""
    if os.environ.get(PAUSE_ENV) == step:
        print(f"headcount-test-paused {step}", file=sys.stderr, flush=True)
        sys.stdin.readline()


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


def _swap_into_place(
    tmp: Path, target: Path, listing: str | None, known: tuple[str, ...], error: Error
) -> None:
    """Rename ``tmp`` to ``target``; an earlier folder there is deleted only after that worked,
    and put back if it failed. SIGINT, SIGTERM and SIGHUP wait until the swap is over; a kill
    between the two renames leaves the earlier folder in ``.NAME.old-PID-*`` for `recover`."""
    with _signals_deferred():
        if target.is_symlink():
            raise error(f"{target} became a symbolic link; nothing was replaced")
        if not (target.exists() and any(target.iterdir())):
            if target.exists():
                target.rmdir()
            os.rename(tmp, target)
            return
        if listing is not None:  # someone may have put files there while we worked
            foreign = foreign_paths(target, listing, known)
            if foreign is None or foreign:
                names = _walk(target) if foreign is None else foreign
                raise error(
                    f"{target} now holds files headcount did not write "
                    f"({', '.join(names[:5])}); nothing was replaced"
                )
        prefix = f".{target.name}.old-{os.getpid()}-"
        aside = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        old = aside / target.name
        try:
            os.rename(target, old)
        except BaseException:
            aside.rmdir()
            raise
        _pause("swap")
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old, target)  # should this fail too, the old folder stays in `aside`
            aside.rmdir()
            raise
        shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def _signals_raised() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `Terminated` (main thread, where they would kill the process
    outright: default handler) so cleanup runs; the handlers are restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def raise_terminated(num: int, _frame: Any) -> None:
        raise Terminated(num)

    for name in ("SIGTERM", "SIGHUP"):
        num = getattr(signal, name, None)
        if num is not None and signal.getsignal(num) is signal.SIG_DFL:
            previous[num] = signal.signal(num, raise_terminated)
    try:
        yield
    finally:
        for num, handler in previous.items():
            signal.signal(num, handler)


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
