"""The low items of the second bad-input round (#28): one clear line each, nothing left behind.

A non-orthonormal orientation was reported as a gantry tilt (DICOM) or as a bare ``direction must
be an orthonormal 3x3 matrix`` (NRRD/MHA); 4-D images and malformed headers gave ITK's own text (or
a message without the file, after every voxel was read); a gzip NRRD passing the voxel limit could
demand more memory than the machine has; an upper-case ``.NII.GZ`` output was reported as a full
disk; a full disk while writing a checkpoint, a model or a DICOM series printed "unexpected ..." or
a pydicom traceback and left ``checkpoint.tmp``; a killed demo left its ``.qhqgan-demo-*`` folder.
"""
from __future__ import annotations

import copy
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from QHQGANLib.apps.cli import main
from QHQGANLib.core.io import read_volume, write_volume
from QHQGANLib.core.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
#: File-size limits (a full disk, reproduced), SIGKILL and ru_maxrss in kB: Linux and other POSIX systems.
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX resource limits and signals")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("qhqgan: error:"), err
    for bare in ("unexpected", "Traceback", "\n", "Exception thrown", "itk::", "[nrrd]", "\\n"):
        assert bare not in err, err
    return err


def _ct(shape=(4, 16, 16)) -> np.ndarray:
    """Air around a water disc: values that look like CT in HU."""
    z, y, x = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    return np.where((y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2 < (shape[1] / 3) ** 2, 40.0,
                    -1000.0).astype(np.float32)


# ---------------------------------------------------------------------------
# 1. non-orthonormal orientation: said so, not a gantry tilt
# ---------------------------------------------------------------------------
def _dicom_series(folder: Path, ct_small_path: Path, orientation) -> Path:
    import pydicom

    folder.mkdir()
    source = pydicom.dcmread(str(ct_small_path))
    for k in range(4):
        ds = copy.deepcopy(source)
        ds.ImageOrientationPatient = list(orientation)
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{k + 1}"
        ds.save_as(folder / f"{k}.dcm")
    return folder


@pytest.mark.parametrize("orientation, problem", [
    ((1, 0, 0, 0.3, 0.954, 0), "at 72.54 degrees, not 90"),  # sheared: read as a 5.4 degree gantry tilt
    ((2, 0, 0, 0, 1, 0), "length 2, not 1"),  # not unit: silently normalised
    ((1, 0, 0, 0, 0.9, 0), "length 0.9, not 1"),
])
def test_non_orthonormal_dicom_orientation_is_named_not_a_gantry_tilt(tmp_path, ct_small_path, capsys,
                                                                       orientation, problem):
    series = _dicom_series(tmp_path / "series", ct_small_path, orientation)
    assert main(["simulate-low-dose", str(series), str(tmp_path / "low.nrrd"), "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert "image orientation is not orthonormal (ImageOrientationPatient" in err and problem in err
    assert "gantry tilt of" not in err and "--regularize-tilt" not in err
    assert not (tmp_path / "low.nrrd").exists()


def test_orientation_rounded_in_the_header_is_read_exactly_orthonormal(tmp_path, ct_small_path):
    """Off by rounding (4e-4): accepted, the geometry made exactly orthonormal (it failed inside Volume)."""
    series = _dicom_series(tmp_path / "series", ct_small_path, (1, 0, 0, 0.0004, 1.0003, 0))
    volume = read_volume(series)
    assert np.allclose(volume.direction.T @ volume.direction, np.eye(3), atol=1e-12)


def _nrrd_text(fields: str, array: np.ndarray) -> bytes:
    return ("NRRD0004\n" + textwrap.dedent(fields).strip() + "\n\n").encode() + array.tobytes()


@pytest.mark.parametrize("name, content, problem", [
    ("shear.nrrd", _nrrd_text("""
        type: float
        dimension: 3
        space: left-posterior-superior
        sizes: 16 16 4
        space directions: (1,0,0) (0.5,1,0) (0,0,2)
        endian: little
        encoding: raw""", _ct()), "axes i and j at 63.43 degrees, not 90"),
    ("shear.mha", b"ObjectType = Image\nNDims = 3\nTransformMatrix = 1 0 0 0.5 1 0 0 0 1\nElementSpacing = 1 1 2\n"
                  b"DimSize = 16 16 4\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n" + _ct().tobytes(),
     "axis j has length 1.118, not 1"),
])
def test_non_orthonormal_direction_in_a_file_is_named(tmp_path, capsys, name, content, problem):
    (tmp_path / name).write_bytes(content)
    assert main(["simulate-low-dose", str(tmp_path / name), str(tmp_path / "low.nrrd"), "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert f"{tmp_path / name}: image orientation is not orthonormal (" in err and problem in err


def test_sheared_nifti_sform_is_named_without_itk_text(tmp_path, capsys):
    plain = write_volume(Volume(_ct(), (1, 1, 1)), tmp_path / "v.nii")
    data = bytearray(plain.read_bytes())
    data[252:256] = struct.pack("<hh", 0, 1)  # qform_code 0, sform_code 1
    data[280:328] = struct.pack("<12f", 1, 0.5, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0)  # a sheared sform
    (tmp_path / "shear.nii").write_bytes(bytes(data))
    assert main(["simulate-low-dose", str(tmp_path / "shear.nii"), str(tmp_path / "low.nrrd"), "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert "image orientation is not orthonormal (" in err and "WARNING" not in err


# ---------------------------------------------------------------------------
# 2. 4-D images and malformed headers: refused by the header checks, before ITK
# ---------------------------------------------------------------------------
RAW_FLOAT = "type: float\nendian: little\nencoding: raw\n"
FOUR_D = np.full((3, 4, 16, 16), -1000.0, np.float32)


def _nifti_4d(tmp_path: Path, dims) -> bytes:
    data = bytearray(write_volume(Volume(_ct(), (1, 1, 1)), tmp_path / "base.nii").read_bytes())
    data[40:56] = struct.pack("<8h", *dims)
    data[76:108] = struct.pack("<8f", *[1.0] * 8)
    return bytes(data) + FOUR_D.tobytes()


@pytest.mark.parametrize("name, header, expected", [
    ("time.nrrd", RAW_FLOAT + "dimension: 4\nsizes: 16 16 4 3\nkinds: domain domain domain time",
     "4-D image (a series of 3 volumes of size 16 x 16 x 4): QHQGAN reads 3-D CT volumes"),
    ("plain4d.nrrd", RAW_FLOAT + "dimension: 4\nsizes: 16 16 4 3", "4-D image (a series of 3 volumes"),
    ("vector.nrrd", RAW_FLOAT + "dimension: 4\nsizes: 3 16 16 4\nkinds: vector domain domain domain",
     "4-D image (3 values per voxel: axis kind 'vector'): QHQGAN reads 3-D CT volumes"),
    ("4d.mha", "ObjectType = Image\nNDims = 4\nDimSize = 16 16 4 3\nElementType = MET_FLOAT\nElementDataFile = LOCAL",
     "4-D image (a series of 3 volumes of size 16 x 16 x 4): QHQGAN reads 3-D CT volumes"),
    ("4d.nii", (4, 16, 16, 4, 3, 1, 1, 1), "4-D image (a series of 3 volumes of size 16 x 16 x 4)"),
    ("nosizes.nrrd", RAW_FLOAT + "dimension: 3", "the NRRD header has no 'sizes' field"),
    ("nodimension.nrrd", RAW_FLOAT + "sizes: 16 16 4 3", "the NRRD header has no 'dimension' field"),
    ("mismatch.nrrd", RAW_FLOAT + "dimension: 3\nsizes: 16 16 4 3", "says dimension 3 but lists 4 sizes"),
    ("noendian.nrrd", "type: float\nencoding: raw\ndimension: 3\nsizes: 16 16 12", "has no 'endian' field"),
    ("encoding.nrrd", "type: float\nendian: little\nencoding: rot13\ndimension: 3\nsizes: 16 16 12",
     "encoding 'rot13' is not one NRRD defines"),
    ("type.nrrd", "type: banana\nendian: little\nencoding: raw\ndimension: 3\nsizes: 16 16 12",
     "type 'banana' is not a NRRD pixel type"),
    ("type.mha", "ObjectType = Image\nNDims = 3\nDimSize = 16 16 12\nElementType = MET_BANANA\nElementDataFile = LOCAL",
     "ElementType 'MET_BANANA' is not a MetaImage pixel type"),
])
def test_4d_images_and_malformed_headers_are_named(tmp_path, capsys, name, header, expected):
    path = tmp_path / name
    if name.endswith(".nii"):
        path.write_bytes(_nifti_4d(tmp_path, header))
    else:
        magic = "NRRD0004\n" if name.endswith(".nrrd") else ""
        path.write_bytes((magic + header + ("\n\n" if magic else "\n")).encode() + FOUR_D.tobytes())
    assert main(["simulate-low-dose", str(path), str(tmp_path / "low.nrrd"), "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert f"{path}: " in err and expected in err


def test_extra_axes_of_size_one_are_read_as_3d(tmp_path):
    """A 4-D NRRD of one time point read as the 3-D volume it holds ("the image is 4D" before); a NIfTI
    with dim[0]=4 and dim[4]=1 stays accepted."""
    nrrd = tmp_path / "one.nrrd"
    nrrd.write_bytes(_nrrd_text(RAW_FLOAT + "dimension: 4\nsizes: 16 16 4 1", _ct()))
    assert read_volume(nrrd).shape == (4, 16, 16)
    nii = tmp_path / "one.nii"
    data = bytearray(write_volume(Volume(_ct(), (1, 1, 1)), tmp_path / "base.nii").read_bytes())
    data[40:56] = struct.pack("<8h", 4, 16, 16, 4, 1, 1, 1, 1)
    nii.write_bytes(bytes(data))
    assert read_volume(nii).shape == (4, 16, 16)


# ---------------------------------------------------------------------------
# 3. a memory limit in bytes, before any allocation
# ---------------------------------------------------------------------------
def _gzip_bomb(path: Path, size=(200, 200, 500)) -> Path:
    """An honest gzip NRRD of zeros, 160 MB of doubles in about 160 kB: it passes the voxel limit."""
    header = f"NRRD0004\ntype: double\ndimension: 3\nsizes: {size[0]} {size[1]} {size[2]}\nendian: little\n" \
             "encoding: gzip\n\n"
    packer = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(size[0] * size[1] * 8)
    with open(path, "wb") as fh:
        fh.write(header.encode())
        for _ in range(size[2]):
            fh.write(packer.compress(block))
        fh.write(packer.flush())
    return path


MEMORY_RUN = textwrap.dedent("""
    import resource, sys
    try:
        from QHQGANLib.core import memory
        memory.available_memory = lambda: (128 * 2**20, "MemAvailable")   # a machine with 128 MiB free
    except ImportError:  # (QHQGAN before the memory limit)
        pass
    from QHQGANLib.apps.cli import main
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code = main(["simulate-low-dose", sys.argv[1], sys.argv[2], "--quiet", "--force"])
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(code, grown)
""")


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in kB on Linux")
def test_a_gzip_nrrd_needing_more_memory_than_available_is_refused_before_allocating(tmp_path):
    bomb = _gzip_bomb(tmp_path / "bomb.nrrd")
    assert bomb.stat().st_size < 2_000_000  # 2e7 voxels: 0.2 GiB as stored, 0.07 as float32
    run = subprocess.run([sys.executable, "-c", MEMORY_RUN, str(bomb), str(tmp_path / "low.nrrd")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    code, grown_kb = (int(v) for v in run.stdout.split())
    err = run.stderr.strip()
    assert code == 2 and "\n" not in err, err
    assert "reading it needs 0.2 GiB of memory (size (200, 200, 500), 8 bytes per voxel as stored plus 4 as float32)" \
           " but 0.1 GiB is available (MemAvailable)" in err
    assert grown_kb < 60_000, f"the process grew by {grown_kb} kB: the voxels were allocated"


def test_the_voxel_limit_is_kept_and_dicom_reads_are_limited_too(tmp_path, ct_small_path, monkeypatch):
    from QHQGANLib.core import memory

    write_volume(Volume(_ct((4, 64, 64)), (1, 1, 1)), tmp_path / "v.nrrd")
    with pytest.raises(ValueError, match="exceed the limit of 1,000"):
        read_volume(tmp_path / "v.nrrd", max_voxels=1000)
    monkeypatch.setattr(memory, "available_memory", lambda: (10_000, "MemAvailable"))
    with pytest.raises(ValueError, match=r"needs 0\.0 GiB .*4 bytes per voxel as float32"):
        read_volume(ct_small_path)  # a DICOM read: float32 only (decoded slice by slice)


def test_available_memory_falls_back_where_the_system_does_not_say(monkeypatch, tmp_path):
    from QHQGANLib.core import memory

    monkeypatch.setattr(memory, "CGROUP_FILES", ())  # the machine's own container limit, if any, aside
    if Path("/proc/meminfo").exists():
        available, where = memory.available_memory()
        assert where == "MemAvailable" and available > 0
    monkeypatch.setattr(memory, "MEMINFO", tmp_path / "no-meminfo")  # macOS, Windows
    monkeypatch.setitem(sys.modules, "psutil", None)  # psutil not installed: import fails
    if hasattr(os, "sysconf"):
        try:
            os.sysconf("SC_AVPHYS_PAGES")
            assert memory.available_memory()[1] == "free physical memory"
        except (ValueError, OSError):
            pass
    monkeypatch.setattr(os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)), raising=False)
    assert memory.available_memory() == (memory.FALLBACK_AVAILABLE_BYTES, "the system does not say; a fixed limit")


def test_a_containers_memory_limit_counts(monkeypatch, tmp_path):
    """In a container MemAvailable is the host's: the room left under the cgroup limit is what counts."""
    from QHQGANLib.core import memory

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 67108864 kB\nMemAvailable: 33554432 kB\n")  # 32 GiB free on the host
    limit, used = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text(f"{2 * 2**30}\n")
    used.write_text(f"{2**29}\n")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)
    monkeypatch.setattr(memory, "CGROUP_FILES", ((limit, used),))
    assert memory.available_memory() == (int(1.5 * 2**30), "the container's memory limit")
    assert "1.5 GiB is available (the container's memory limit)" in memory.memory_shortfall(
        2**28, 4, (2**14, 2**14, 1), "big.nrrd")
    limit.write_text("max\n")  # no limit: the system's figure
    assert memory.available_memory() == (32 * 2**30, "MemAvailable")


# ---------------------------------------------------------------------------
# 4. upper-case endings: refused before work as what they are, or read
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name, lower", [("OUT.NII.GZ", "OUT.nii.gz"), ("out.Nii", "out.nii"), ("O.MHA", "O.mha"),
                                         ("o.Mhd", "o.mhd")])
def test_upper_case_nifti_and_metaimage_outputs_are_refused_before_work(tmp_path, ct_small_path, capsys, name,
                                                                        lower):
    code = main(["--progress", "lines", "simulate-low-dose", str(ct_small_path), str(tmp_path / name)])
    out = capsys.readouterr()
    assert code == 2 and "QHQGAN-PROGRESS" not in out.out  # before the simulation
    assert f"written with a lower-case ending: name it {lower}" in out.err and "full" not in out.err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="lower-case ending"):
        write_volume(Volume(_ct(), (1, 1, 1)), tmp_path / name)


def test_upper_case_inputs_and_nrrd_outputs_work(tmp_path, ct_small_path, capsys):
    volume = Volume(_ct(), (1, 1, 1))
    for lower, upper in (("v.mha", "V.MHA"), ("v.nii.gz", "V.NII.GZ"), ("w.mhd", "W.MHD")):
        write_volume(volume, tmp_path / lower)
        shutil.move(tmp_path / lower, tmp_path / upper)  # W.MHD keeps naming its data file w.zraw
        assert main(["simulate-low-dose", str(tmp_path / upper), str(tmp_path / f"low-{upper}.nrrd"), "--quiet"]) == 0
    assert main(["simulate-low-dose", str(ct_small_path), str(tmp_path / "LOW.NRRD"), "--quiet"]) == 0
    assert read_volume(tmp_path / "LOW.NRRD").shape == (1, 128, 128)
    capsys.readouterr()


# ---------------------------------------------------------------------------
# 5. a full disk: one line, nothing left; a killed demo's folder cleaned by the next
# ---------------------------------------------------------------------------
def _limit_file_size(limit: int):
    import resource

    def set_limit():  # in the child: writes past the limit fail with EFBIG, as a full disk fails with ENOSPC
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


@posix_only
def test_a_full_disk_during_a_dicom_export_is_one_line(tmp_path, ct_small_path):
    """pydicom put a whole traceback into the message."""
    run = subprocess.run([sys.executable, "-m", "QHQGANLib.apps.cli", "enhance", str(ct_small_path),
                          str(tmp_path / "series"), "--dicom", "--quiet"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, preexec_fn=_limit_file_size(20_000))
    err = run.stderr.strip()
    assert run.returncode == 2 and err.startswith("qhqgan: error:") and "\n" not in err, err
    assert "writing failed (File too large)" in err and "Nothing was written" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


CHECKPOINT_RUN = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from QHQGANLib.training.checkpoints import write_checkpoint
    write_checkpoint(Path("checkpoint.pt"), {"step": 1, "w": torch.zeros(10)})   # the earlier checkpoint
    import resource
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    try:
        write_checkpoint(Path("checkpoint.pt"), {"step": 2, "w": torch.zeros(100_000)})
    except OSError as exc:
        print(exc)
""")


@posix_only
def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_tmp(tmp_path):
    """It was 'unexpected RuntimeError: [enforce fail at inline_container.cc]', with checkpoint.tmp left."""
    import torch

    run = subprocess.run([sys.executable, "-c", CHECKPOINT_RUN], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, preexec_fn=_limit_file_size(10**9))
    message = run.stdout.strip()
    assert run.returncode == 0 and "\n" not in message, run.stderr
    assert message.startswith("checkpoint.pt: writing failed (File too large)") and "previous checkpoint is kept" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 1


MODEL_RUN = textwrap.dedent("""
    import resource, sys
    from QHQGANLib.nn.weights import load_model, save_model
    model = load_model(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
    try:
        save_model(model, "saved")
    except OSError as exc:
        print(type(exc).__name__, exc)
""")


@posix_only
def test_a_full_disk_while_saving_a_model_is_an_oserror(tmp_path):
    """It was a SafetensorError, printed by the command line as 'unexpected SafetensorError'."""
    from QHQGANLib.core.resources import model_cards

    card = next((c for c in model_cards() if c.get("task") == "enhance"), None)
    if card is None:
        pytest.skip("no enhancement model ships in this installation")
    run = subprocess.run([sys.executable, "-c", MODEL_RUN, card["name"]], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, preexec_fn=_limit_file_size(10**9))
    message = run.stdout.strip()
    assert run.returncode == 0 and message.startswith("OSError saved.safetensors: writing failed ("), run.stderr
    assert "File too large" in message and "Nothing was written" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


KILLED_DEMO = textwrap.dedent("""
    import os, signal, sys
    import QHQGANLib.core.io as io
    def killed(*args, **kwargs):   # the demo killed (SIGKILL) while it writes its outputs
        os.kill(os.getpid(), signal.SIGKILL)
    io.write_volume = killed
    from QHQGANLib.apps.demo import run_demo
    run_demo(output_dir=sys.argv[1], max_slices=1, show_progress=False)
""")


@posix_only
def test_a_killed_demos_staging_folder_is_removed_by_the_next_demo(tmp_path, capsys):
    run = subprocess.run([sys.executable, "-c", KILLED_DEMO, str(tmp_path / "first")], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert run.returncode == -signal.SIGKILL, run.stderr
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".qhqgan-"), left  # the killed run's staging folder
    assert main(["demo", "--output-dir", str(tmp_path / "second"), "--max-slices", "1", "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["second"]  # the stale folder is gone
    capsys.readouterr()


def test_a_staging_folder_whose_process_id_was_reused_is_removed(tmp_path):
    """The folder names its process by id and start time: the same id, started later, is another process."""
    from QHQGANLib.core.outputs import make_temp_folder, process_token

    if " " not in process_token():
        pytest.skip("process start times come from /proc (Linux)")
    pid, start = process_token().split()
    stale = tmp_path / f".qhqgan-write-{pid}-{int(start) - 1}-abcd1234"  # this id, an earlier process
    stale.mkdir()
    mine = make_temp_folder(tmp_path)
    assert not stale.exists() and mine.name.startswith(f".qhqgan-write-{pid}-{start}-")
    make_temp_folder(tmp_path)
    assert mine.exists()  # this process's own folder is never taken
