"""Where outputs go, and the checks that keep them from harming the input, each other, or passing as real.

Every output is checked before any computation (:func:`check_output_path`), claimed for the
whole run (:func:`claim_output`: a second run writing the same path is refused at once, not
after it has computed), written beside the target in a temporary folder, verified, and only
then moved into place without replacing anything that appeared meanwhile (:func:`commit_file`).
A run deletes only what it created: temporary folders on every exit path (``SIGTERM`` included,
see :func:`QHQGANLib.apps.cli.main`), and those a killed run of QHQGAN left behind.

Console usage::

    >>> from QHQGANLib.core.outputs import timestamped_folder, check_not_input, claim_output
    >>> timestamped_folder("qhqgan-demo")          # Path('qhqgan-demo-20261125-101500'), not yet created
    >>> check_not_input("ct.nrrd", "ct.nrrd")      # ValueError: QHQGAN never overwrites its input
    >>> with claim_output("out.nrrd"):              # FileExistsError if another run is writing out.nrrd
    ...     pass
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]

#: Name prefix of the temporary folders writers use beside their target (followed by the writer's pid).
TEMP_PREFIX = ".qhqgan-write-"
#: Suffix of the claim files that mark an output as being written by a live run.
CLAIM_SUFFIX = ".qhqgan-claim"
#: The two-file formats and the data-file endings SimpleITK gives them.
DETACHED_DATA = {".nhdr": (".raw", ".raw.gz"), ".mhd": (".raw", ".zraw")}
#: Volume endings ITK's writers recognise only in lower case (``OUT.NII.GZ`` failed as if the disk were full);
#: NRRD's ``.NRRD`` / ``.NHDR`` are written in any case.
LOWER_CASE_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd")


def timestamped_folder(prefix: str, parent: Optional[PathLike] = None) -> Path:
    """A new folder path ``<prefix>-YYYYmmdd-HHMMSS`` (suffixed when it exists); not created."""
    base = Path(parent or ".") / f"{prefix}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def check_not_input(input_path: PathLike, output_path: PathLike) -> None:
    """Refuse an output that would replace the input or any file it is made of.

    Writing ``b.nhdr`` also writes ``b.raw.gz``: if that is the data file of the input ``a.nhdr``
    the input would be destroyed, so it is refused too.
    """
    from .file_checks import data_files

    inputs = {p.resolve() for p in data_files(Path(input_path))}
    for out in output_files(output_path):
        if out.resolve() in inputs:
            which = "is the input" if out.resolve() == Path(input_path).resolve() else f"would replace {out}, a file of the input"
            raise ValueError(f"the output {output_path} {which}: QHQGAN never overwrites its input")


def output_files(path: PathLike) -> list:
    """The files that writing ``path`` creates: the path itself, plus the data file of ``.nhdr`` / ``.mhd``."""
    path = Path(path)
    name = path.name.lower()
    for suffix, data_suffixes in DETACHED_DATA.items():
        if name.endswith(suffix):
            stem = path.name[: -len(suffix)]
            return [path] + [path.with_name(stem + d) for d in data_suffixes]
    return [path]


def check_output_path(path: PathLike, *, overwrite: bool = False, suffixes: Sequence[str] = (),
                      folder: bool = False) -> Path:
    """Every mistake in an output path, found before any work: missing parent folder, a folder where
    a file is meant (or the reverse), an existing output without ``overwrite``, a wrong file ending.

    Returns the path (``~`` expanded).
    """
    out = Path(path).expanduser()
    if suffixes and not folder and not out.name.lower().endswith(tuple(suffixes)):
        raise ValueError(f"{out}: the output must end with one of {', '.join(suffixes)}")
    ending = next((s for s in LOWER_CASE_ENDINGS if out.name.lower().endswith(s)), "")
    if ending and not folder and not out.name.endswith(ending):
        raise ValueError(f"{out}: NIfTI and MetaImage files are written with a lower-case ending: name it "
                         f"{out.name[:-len(ending)]}{ending} (ITK's writer does not know '{out.name[-len(ending):]}')")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: the output folder does not exist; create it first")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{out.parent}: no permission to write in this folder")
    if folder:
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a folder")
    elif out.is_dir():
        raise IsADirectoryError(f"{out} is a folder; give a file name inside it, e.g. {out / 'result.nrrd'}")
    check_new_output(out, overwrite)
    for extra in output_files(out)[1:]:
        if extra.exists() and not overwrite:
            raise FileExistsError(f"{extra} exists (it would be written as the data file of {out.name}); "
                                  "pass --overwrite to replace it")
    return out


def check_report_path(path: PathLike, inputs: Sequence[Optional[PathLike]] = (), *, overwrite: bool = False) -> Path:
    """A report (JSON, text) is an output like a volume: checked before any work. Its folder must exist,
    it must not be any file of ``inputs`` (volumes, DICOM folders, model files), and an existing file is
    refused unless ``overwrite``. Returns the path (``~`` expanded); write it with :func:`write_text_output`.
    """
    for source in inputs:
        if source is not None and Path(source).expanduser().exists():
            check_not_input(Path(source).expanduser(), Path(path).expanduser())
    return check_output_path(path, overwrite=overwrite)


def write_text_output(path: PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path`` as every output is written: claimed, into a temporary folder beside it,
    then moved into place (a file that appeared meanwhile is not replaced unless ``overwrite``).
    A failed write (full disk) leaves nothing behind and says so."""
    out = Path(path).expanduser()
    with claim_output(out):
        tmp = make_temp_folder(out.parent)
        try:
            staged = tmp / out.name
            try:
                staged.write_text(text)
            except OSError as exc:
                free = shutil.disk_usage(out.parent).free
                raise OSError(f"{out}: writing failed ({exc.strerror or exc}); {free / 2**20:.0f} MiB free on that "
                              "disk. Nothing was written.") from None
            commit_file(staged, out, overwrite)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_new_output(output_path: PathLike, overwrite: bool = False) -> None:
    """Refuse an existing output file (or non-empty folder) unless ``overwrite``."""
    out = Path(output_path)
    if overwrite or not out.exists():
        return
    if out.is_dir():
        if any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
        return
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it")


def require_synthetic_name(path: PathLike) -> None:
    """Synthetic images are marked synthetic in their names too: refuse a name without 'synthetic'."""
    if "synthetic" not in Path(path).name.lower():
        raise ValueError(f"{path}: synthetic images are marked synthetic in their names too; "
                         "use a name containing 'synthetic', e.g. liver_synthetic.nrrd")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_time(pid: int) -> str:
    """When process ``pid`` started (Linux: clock ticks since boot, /proc/<pid>/stat field 22); "" where
    the system does not say. With its process id it names one process: an id reused later by another
    process (after a reboot, or on a busy machine) has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else ""


def process_token() -> str:
    """This process as a claim file holds it: ``"<pid> <start time>"``."""
    pid = os.getpid()
    return f"{pid} {_start_time(pid)}".strip()


def holder_alive(token: str) -> bool:
    """True while the process a claim names still runs (the same process, not a later one given its id)."""
    parts = token.split()
    if not parts or not parts[0].isdigit():
        return False
    pid = int(parts[0])
    if not _pid_alive(pid):
        return False
    if len(parts) > 1:
        now = _start_time(pid)
        return not now or now == parts[1]
    return True


def _claim_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{CLAIM_SUFFIX}")


@contextlib.contextmanager
def claim_output(path: PathLike) -> Iterator[Path]:
    """Hold ``path`` for this run: a second run (another process) claiming it gets a ``FileExistsError``
    at once. Claims are small hidden files beside the output, removed on exit; one left by a run that
    died (its process is gone) is taken over. Nested claims of the same path by one process are allowed.
    """
    out = Path(path).expanduser()
    claim = _claim_path(out)
    mine = process_token()
    for _ in range(3):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = claim.read_text().strip()
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if holder == mine:  # nested claim in this process
                yield out
                return
            if holder_alive(holder):
                raise FileExistsError(f"{out} is being written by another QHQGAN run (process "
                                      f"{holder.split()[0]}); wait for it to finish or choose another output") from None
            with contextlib.suppress(FileNotFoundError):
                claim.unlink()  # stale: its run is gone
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(mine)
        try:
            yield out
        finally:
            with contextlib.suppress(FileNotFoundError):
                if claim.read_text().strip() == mine:
                    claim.unlink()
        return
    raise FileExistsError(f"{out}: could not claim the output (another run keeps claiming it)")


def make_temp_folder(parent: Path) -> Path:
    """A private temporary folder beside the output (same file system: the final rename is atomic).

    Its name holds this process as a claim does (``.qhqgan-write-<pid>-<start time>-*``). Folders left
    by QHQGAN runs that were killed are removed first: those whose process is gone, or whose process id
    now belongs to another process (another start time). QHQGAN created them; nothing else uses the name.
    """
    import tempfile

    for old in parent.glob(f"{TEMP_PREFIX}*"):
        parts = old.name[len(TEMP_PREFIX):].split("-")  # pid, start time, random (older: pid, random)
        if not (old.is_dir() and parts[0].isdigit()):
            continue
        token = " ".join(parts[:2] if len(parts) > 2 and parts[1].isdigit() else parts[:1])
        if token != process_token() and not holder_alive(token):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=parent, prefix=f"{TEMP_PREFIX}{process_token().replace(' ', '-')}-"))


def _chain(exc: BaseException) -> list:
    """``exc`` and the exceptions it wraps (``__cause__``, else ``__context__``), outermost first."""
    chain = [exc]
    while len(chain) < 20 and (chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return chain


def write_failed(target: PathLike, exc: BaseException, outcome: str = "Nothing was written.") -> OSError:
    """One line for a write that failed part-way (a full disk, a file-size limit): the system's reason,
    found through wrapped exceptions (pydicom puts a whole traceback into its message), and the free space."""
    from .file_checks import first_line

    reason = next((e.strerror for e in _chain(exc) if isinstance(e, OSError) and e.strerror), "")
    try:
        free = f"; {shutil.disk_usage(Path(target).expanduser().parent).free / 2**20:.0f} MiB free on that disk"
    except OSError:
        free = ""
    return OSError(f"{target}: writing failed ({reason or first_line(exc)}){free}: is it full? {outcome}")


def commit_file(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move a finished file into place. Without ``overwrite`` it never replaces a file that appeared
    since the checks (a hard link fails if the target exists; the rename fallback checks just before)."""
    if overwrite:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise FileExistsError(f"{target} appeared while this run was computing; the result was not "
                              "written over it (pass --overwrite to replace it)") from None
    except OSError:  # file systems without hard links
        if target.exists():
            raise FileExistsError(f"{target} appeared while this run was computing; not replaced") from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


#: errno values of a write that ran out of room: a full disk, a file-size limit, a quota.
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def raise_if_disk_full(target: PathLike, exc: BaseException, outcome: str = "Nothing was written.") -> None:
    """Raise :func:`write_failed`'s one line when ``exc``, or an exception it wraps, is a full disk."""
    if any(isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS for e in _chain(exc)):
        raise write_failed(target, exc, outcome) from None
