"""Bad input and faults on writing (#12): refused with the reason, nothing silently wrong, nothing lost.

Each test reproduces one finding of the bad-input battery: truncated and lying files, unsafe
detached data files, FIFOs, a full disk (a file-size limit makes the write fail part-way, as a
full disk does), two runs writing the same output, an input destroyed through its data file.
"""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from QHQGANLib.core.file_checks import data_files
from QHQGANLib.core.io import VolumeReadError, read_volume, write_volume
from QHQGANLib.core.outputs import check_not_input, claim_output
from QHQGANLib.core.volume import Volume

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ct() -> Volume:
    """A small CT-like volume in HU (air around a water cylinder with noise)."""
    z, y, x = np.mgrid[0:6, 0:48, 0:48]
    array = np.where((y - 24) ** 2 + (x - 24) ** 2 < 18 ** 2, 40.0, -1000.0)
    array = array + np.random.default_rng(0).normal(0, 20, array.shape)
    return Volume(array.astype(np.float32), (0.8, 0.8, 2.5), (-10.0, -20.0, 30.0))


def _leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz", "v.mha", "v.nrrd"])
def test_truncated_file_is_refused_not_zero_filled(tmp_path, ct, name):
    good = write_volume(ct, tmp_path / name)
    assert np.allclose(read_volume(good).array, ct.array)
    data = good.read_bytes()
    cut = tmp_path / ("cut-" + name)
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(VolumeReadError, match="truncated|end early|corrupt"):
        read_volume(cut)


def test_lying_header_is_refused_before_allocating(tmp_path, ct):
    """A 772-byte NIfTI declaring 30000 x 30000 voxels read 'OK' after allocating 7 GB."""
    head = bytearray(write_volume(ct, tmp_path / "v.nii").read_bytes()[:352])
    head[40:56] = struct.pack("<8h", 3, 30000, 30000, 1, 1, 1, 1, 1)
    liar = tmp_path / "liar.nii"
    liar.write_bytes(bytes(head) + bytes(420))
    assert liar.stat().st_size == 772
    with pytest.raises(VolumeReadError, match=r"\(30000, 30000, 1\).*holds 772"):
        read_volume(liar)


@pytest.mark.parametrize("value", [0.0, float("nan"), float("inf")])
def test_zero_or_nan_spacing_is_refused(tmp_path, ct, value):
    data = bytearray(write_volume(ct, tmp_path / "v.nii").read_bytes())
    data[80:84] = struct.pack("<f", value)  # pixdim[1]: the x spacing
    bad = tmp_path / "bad.nii"
    bad.write_bytes(bytes(data))
    with pytest.raises(VolumeReadError, match="spacing"):
        read_volume(bad)


def test_detached_data_outside_the_header_folder_is_refused(tmp_path, ct):
    header = write_volume(ct, tmp_path / "v.nhdr", compress=False)
    text = header.read_text(encoding="latin-1")
    evil = tmp_path / "evil.nhdr"
    evil.write_text(re.sub(r"data file: .*", "data file: /etc/passwd", text), encoding="latin-1")
    with pytest.raises(VolumeReadError, match="outside the header's folder"):
        read_volume(evil, force=True)
    # a data file beside it, in a sub-folder, is fine; outside only with the explicit option
    sub = tmp_path / "sub"
    sub.mkdir()
    (tmp_path / "v.raw").rename(sub / "v.raw")
    header.write_text(text.replace("data file: v.raw", "data file: sub/v.raw"), encoding="latin-1")
    assert np.allclose(read_volume(header).array, ct.array)
    outside = tmp_path / "other"
    outside.mkdir()
    moved = outside / "h.nhdr"
    moved.write_text(text.replace("data file: v.raw", f"data file: {sub / 'v.raw'}"), encoding="latin-1")
    with pytest.raises(VolumeReadError, match="outside"):
        read_volume(moved)
    assert np.allclose(read_volume(moved, allow_external_data=True).array, ct.array)


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.nii"
    os.mkfifo(fifo)
    code = f"from QHQGANLib.core.io import read_volume\nread_volume({str(fifo)!r})"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "named pipe" in run.stderr


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np
    from QHQGANLib.core.volume import Volume
    from QHQGANLib.core.io import write_volume
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG, like ENOSPC
    v = Volume(np.random.default_rng(1).normal(0, 100, (20, 128, 128)).astype(np.float32), (1, 1, 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    write_volume(v, sys.argv[1], overwrite=True)
""")


@pytest.mark.parametrize("name", ["out.nii", "out.nii.gz", "out.nrrd", "out.nhdr", "out.mha"])
def test_a_full_disk_loses_nothing(tmp_path, ct, name):
    """The writer fails part-way (as on a full disk): an error, no partial file, the earlier result kept."""
    earlier = write_volume(ct, tmp_path / name)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    run = subprocess.run([sys.executable, "-c", FULL_DISK, str(earlier)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert run.returncode != 0
    assert "full" in run.stderr and "Nothing was written" in run.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp folder, nothing replaced


def test_output_never_replaces_the_inputs_data_file(tmp_path, ct):
    """Input a.nhdr with data b.raw.gz was destroyed by writing b.nhdr --overwrite."""
    write_volume(ct, tmp_path / "b.nhdr")  # makes b.raw.gz
    (tmp_path / "b.nhdr").rename(tmp_path / "a.nhdr")  # a.nhdr now reads b.raw.gz
    source = read_volume(tmp_path / "a.nhdr")
    assert [p.name for p in data_files(tmp_path / "a.nhdr")] == ["a.nhdr", "b.raw.gz"]
    with pytest.raises(ValueError, match="a file of the input"):
        check_not_input(tmp_path / "a.nhdr", tmp_path / "b.nhdr")
    with pytest.raises(ValueError, match="never overwrites its input"):  # write_volume checks its source too
        write_volume(source, tmp_path / "b.nhdr", overwrite=True)
    assert np.allclose(read_volume(tmp_path / "a.nhdr").array, ct.array)


def test_a_second_run_cannot_claim_the_same_output(tmp_path, ct):
    out = tmp_path / "result.nrrd"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from QHQGANLib.core.outputs import claim_output
        with claim_output({str(out)!r}):
            print("claimed", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(FileExistsError, match="another QHQGAN run"):
            write_volume(ct, out)
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the claim of a run that died is taken over
    with claim_output(out):
        write_volume(ct, out)  # nested claim by the same process
    assert out.exists() and _leftovers(tmp_path) == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times come from /proc (Linux)")
def test_a_claim_whose_process_id_was_reused_is_taken_over(tmp_path, ct):
    """Issue #28 (low): a claim left by a run that died, whose process id now belongs to another live process
    (after a reboot, or on a busy machine), blocked that output for ever. A claim names its process by id and
    start time: the same id with another start time is another process, and the claim is taken over; the
    live holder itself (same id, same start time) still blocks."""
    from QHQGANLib.core.outputs import process_token

    out = tmp_path / "result.nrrd"
    claim = tmp_path / ".result.nrrd.qhqgan-claim"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid, start = live.pid, Path(f"/proc/{live.pid}/stat").read_text().rsplit(")", 1)[-1].split()[19]
        claim.write_text(f"{pid} {int(start) + 12345}")  # the id is alive, but it is not the claim's process
        write_volume(ct, out)
        assert out.exists() and not claim.exists()
        claim.write_text(f"{pid} {start}")  # the very process: the claim holds
        with pytest.raises(FileExistsError, match="another QHQGAN run"):
            write_volume(ct, out, overwrite=True)
    finally:
        live.kill()
        live.wait()
    assert process_token().split()[0] == str(os.getpid())


def test_leftovers_of_a_killed_write_are_cleaned_by_the_next(tmp_path, ct):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".qhqgan-write-{dead.stdout.strip()}-abc123"
    stale.mkdir()
    (stale / "half.nii").write_bytes(b"x" * 1000)
    other = tmp_path / ".qhqgan-write-notapid"  # not our name pattern: never touched
    other.mkdir()
    write_volume(ct, tmp_path / "v.nrrd")
    assert _leftovers(tmp_path) == [".qhqgan-write-notapid"]


def test_output_path_that_is_a_folder_is_refused(tmp_path, ct):
    (tmp_path / "d.nrrd").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        write_volume(ct, tmp_path / "d.nrrd")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_volume(ct, tmp_path / "missing" / "v.nrrd")


def test_gantry_tilt_is_named_and_can_be_regularized(tmp_path):
    """A sheared (gantry-tilted) series: the error names the tilt; regularize_tilt resamples it exactly."""
    import pydicom

    from QHQGANLib.core.dicom_export import export_dicom_series

    z, y, x = np.mgrid[0:8, 0:40, 0:40]
    truth = np.where((z - 4) ** 2 * 6 + (y - 20) ** 2 + (x - 20) ** 2 < 100, 300.0, -1024.0).astype(np.float32)
    spacing = (0.7, 0.7, 2.5)
    # slice k was acquired 1 pixel further along y per slice: it holds truth[k] shifted by k rows
    stored = np.stack([np.roll(truth[k], -k, axis=0) for k in range(8)])
    files = export_dicom_series(Volume(stored, spacing, (0.0, 0.0, 0.0)), tmp_path / "tilted", synthetic=False)
    for k, f in enumerate(files):
        ds = pydicom.dcmread(str(f))
        ds.ImagePositionPatient = [0.0, k * spacing[1], k * spacing[2]]
        ds.GantryDetectorTilt = "15.6"
        ds.save_as(str(f))
    with pytest.raises(VolumeReadError, match=r"gantry tilt of 15\.6 degrees .*regularize_tilt"):
        read_volume(tmp_path / "tilted")
    regular = read_volume(tmp_path / "tilted", regularize_tilt=True)
    assert regular.metadata["gantry_tilt_degrees"] == pytest.approx(np.degrees(np.arctan(0.7 / 2.5)), abs=0.01)
    assert regular.spacing[2] == pytest.approx(2.5)
    assert np.allclose(regular.direction, np.eye(3), atol=1e-6)
    assert np.array_equal(regular.array, truth)  # integer shifts: the resampling is exact


def test_super_resolution_far_from_its_training_resolution_warns_and_stays_in_range(capsys):
    """A 0.5 mm or 3 mm input is far from the ~1.4-2 mm the x2 model saw: a warning; HU within range."""
    from QHQGANLib.tasks.enhance import spacing_warning, super_resolve

    assert spacing_warning(Volume(np.zeros((1, 8, 8), np.float32), (1.6, 1.6, 2.0)), (1.4, 1.96)) is None
    z, y, x = np.mgrid[0:1, 0:64, 0:64]
    body = np.where((y - 32) ** 2 + (x - 32) ** 2 < 26 ** 2, 40.0, -1000.0).astype(np.float32)
    for pixel in (0.5, 3.0):
        volume = Volume(body.copy(), (pixel, pixel, 2.0))
        with pytest.warns(UserWarning, match="far from"):
            result = super_resolve(volume, scale=2, model="hqgan-sr2")
        assert "far from" in result.metadata["warnings"][0]
        assert result.array.min() >= -1024.0 and result.array.max() <= 3071.0


def test_dicom_overwrite_replaces_only_a_series_qhqgan_wrote(tmp_path, ct, ct_small_path):
    """--overwrite deleted non-DICOM files named .dcm; it now replaces only QHQGAN's own series."""
    import shutil

    from QHQGANLib.core.dicom_export import export_dicom_series

    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "notes.dcm").write_text("a text file named .dcm")
    real = tmp_path / "real"
    real.mkdir()
    shutil.copy(ct_small_path, real / "CT_small.dcm")  # a scanner's file, not QHQGAN's
    for folder in (fake, real):
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        with pytest.raises(FileExistsError, match="QHQGAN did not write"):
            export_dicom_series(ct, folder, overwrite=True)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    ours = tmp_path / "ours"
    export_dicom_series(ct, ours)
    export_dicom_series(ct, ours, overwrite=True)  # our own earlier result may be replaced
    assert len(list(ours.iterdir())) == ct.shape[0]
    assert _leftovers(tmp_path) == []
