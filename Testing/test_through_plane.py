"""Through-plane super-resolution (issue #15): slice profile, exact geometry (oblique included),
interpolation baselines, self-supervised training, the API, the CLI and the background runner's request.

Every test uses real CT from ../shared/data (skipped with the reason when it is absent), cropped
small so the file runs in seconds.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import shared_path

import QHQGANLib as q
from QHQGANLib.core.volume import Volume
from QHQGANLib.physics.slice_profile import (PatchSampler, degrade_along_axis, degrade_batch, profile_matrix,
                                             slice_profile, thick_slices, upsample_along_axis)
from QHQGANLib.tasks.through_plane import interpolate_z, thin_grid


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the small networks here run faster so, and a busy CPU is not oversubscribed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _series() -> Volume:
    """The 20 contiguous 512x512 slices (2 mm apart, SliceThickness 3 mm) of the Siemens series."""
    return q.read_volume(shared_path("abdomen-ct-totalseg/dicom"))


def _crop(volume: Volume, nz: int = 12, size: int = 64, y0: int = 230, x0: int = 200) -> Volume:
    """A small block of ``volume`` (default: inside the abdomen), with the geometry of that block."""
    origin = volume.index_to_physical((x0, y0, 0))
    return Volume(volume.array[:nz, y0:y0 + size, x0:x0 + size], volume.spacing, origin, volume.direction,
                  dict(volume.metadata))


def _oblique(volume: Volume) -> Volume:
    """The same voxels with an oblique direction (rotations about two axes) and a shifted origin."""
    a, b = np.deg2rad(23.0), np.deg2rad(-11.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return Volume(volume.array, volume.spacing, (12.5, -40.25, 301.0), rz @ rx, dict(volume.metadata))


def _untrained(arch: str = "mlp-control", scale: int = 2):
    from QHQGANLib.training.through_plane import ZTrainConfig, build_z_model

    model = build_z_model(ZTrainConfig(arch=arch, scale=scale))
    model.card = {"name": f"untrained-{arch}", "axis": "z", "scale": scale}
    return model


# ---------------------------------------------------------------------------
# the slice profile
# ---------------------------------------------------------------------------
def test_slice_profile_from_dicom_thickness_and_spacing_else_a_box_of_the_spacing():
    series = _series()
    profile = slice_profile(series, 2)
    assert (profile.thickness_mm, profile.spacing_mm, profile.source) == (3.0, 2.0, "dicom")
    assert profile.width_px == pytest.approx(3.0)  # 3 mm every 2 mm: 1.5 thick slices = 3 thin ones at x2
    nifti = q.read_volume(shared_path("abdomen-ct-totalseg/example_ct_sm.nii.gz"))
    box = slice_profile(nifti, 3)
    assert (box.thickness_mm, box.spacing_mm, box.source, box.width_px) == (3.0, 3.0, "spacing", 3.0)
    odd = series.copy()
    odd.metadata["dicom"] = {**odd.metadata["dicom"], "SliceThickness": "40"}  # implausible: 20 x the spacing
    assert slice_profile(odd, 2).source == "spacing"
    thick = thick_slices(series, 2)  # box average of 2 slices: contiguous 4 mm slices
    assert slice_profile(thick, 2).thickness_mm == pytest.approx(4.0) == thick.spacing[2]
    with pytest.raises(ValueError, match="scale must be 2, 3 or 4"):
        slice_profile(series, 5)


def test_box_profile_weights_are_exact_means_and_fractional_boxes_are_symmetric():
    image = _series().array[3, 200:260, 100:160]
    for s in (2, 3, 4):
        h = image.shape[0] // s * s
        expected = image[:h].reshape(h // s, s, -1).mean(axis=1)
        np.testing.assert_allclose(degrade_along_axis(image, s, axis=0), expected, atol=1e-3)
        np.testing.assert_allclose(degrade_along_axis(image.T, s, axis=1), expected.T, atol=1e-3)
    m = profile_matrix(24, 2, width_px=3.0)  # 3 thin pixels: 0.5, 1, 1, 0.5 of the box's centre pixels
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    np.testing.assert_allclose(m[5, 9:13] * 3.0, [0.5, 1.0, 1.0, 0.5])
    assert np.count_nonzero(m[5]) == 4


# ---------------------------------------------------------------------------
# exact geometry
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("oblique", [False, True])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_thin_slices_lie_where_the_original_thin_slices_lay(scale, oblique):
    """thick_slices then super-resolve along z gives back exactly the grid of the original thin slices:
    z spacing / scale, the same slab, the directions kept (oblique ones too)."""
    thin = _crop(_series())
    if oblique:
        thin = _oblique(thin)
    thick = thick_slices(thin, scale)
    n = thick.shape[0] * scale
    expected = Volume(thin.array[:n], thin.spacing, thin.origin, thin.direction)
    for out in (q.super_resolve(thick, scale, axis="z", model=_untrained(scale=scale), device="cpu"),
                interpolate_z(thick, scale)):
        assert out.shape == expected.shape
        assert out.same_geometry(expected, tol=1e-6), (out.spacing, out.origin, expected.origin)
        lo, hi = out.physical_extent()
        tlo, thi = thick.physical_extent()
        np.testing.assert_allclose(lo, tlo, atol=1e-6)  # the same physical slab as the thick input
        np.testing.assert_allclose(hi, thi, atol=1e-6)
        np.testing.assert_array_equal(out.direction, thin.direction)


def test_geometry_rule_for_a_slice_axis_on_an_oblique_volume():
    from QHQGANLib.tasks.geometry import super_resolved_geometry

    v = _oblique(_crop(_series(), nz=4))
    for s in (2, 3, 4):
        spacing, origin = super_resolved_geometry(v, s, axis="z")
        assert spacing == pytest.approx((v.spacing[0], v.spacing[1], v.spacing[2] / s))
        normal = v.direction[:, 2]  # the slice normal of an oblique volume
        np.testing.assert_allclose(origin, np.asarray(v.origin) - (s - 1) / (2 * s) * v.spacing[2] * normal,
                                   atol=1e-9)
    in_plane = super_resolved_geometry(v, 2)  # the in-plane rule is unchanged
    assert in_plane[0] == pytest.approx((v.spacing[0] / 2, v.spacing[1] / 2, v.spacing[2]))


# ---------------------------------------------------------------------------
# interpolation baselines and the untrained model
# ---------------------------------------------------------------------------
def test_box_averaged_volume_restored_by_linear_interpolation_matches_a_baseline_implementation():
    """interpolate_z (linear) equals scipy's interp1d at the physical positions of the thin slices."""
    from scipy.interpolate import interp1d

    thin = _oblique(_crop(_series(), nz=18))
    for s in (2, 3):
        thick = thick_slices(thin, s)
        out = interpolate_z(thick, s, order=1)
        normal = thick.direction[:, 2]
        z_thick = [float(normal @ thick.index_to_physical((0, 0, k))) for k in range(thick.shape[0])]
        z_thin = [float(normal @ out.index_to_physical((0, 0, k))) for k in range(out.shape[0])]
        baseline = interp1d(z_thick, thick.array, axis=0, bounds_error=False,
                            fill_value=(thick.array[0], thick.array[-1]))(z_thin)
        np.testing.assert_allclose(out.array, baseline, atol=1e-3)
        # box averaging then interpolation is a blur: the thin slices are closer than the thick ones
        err_lin = np.abs(out.array - thin.array[:out.shape[0]]).mean()
        cubic = interpolate_z(thick, s, order=3)
        err_nearest = np.abs(np.repeat(thick.array, s, axis=0) - thin.array[:out.shape[0]]).mean()
        assert err_lin < err_nearest and np.abs(cubic.array - thin.array[:out.shape[0]]).mean() < err_nearest


def test_an_untrained_model_is_the_identity_on_the_interpolated_slices():
    """The generator starts as the identity (zero-initialised head): its output is the linear interpolation."""
    thick = thick_slices(_crop(_series()), 2)
    out = q.super_resolve(thick, 2, axis="z", model=_untrained("hqgan"), device="cpu")
    np.testing.assert_allclose(out.array, upsample_along_axis(thick.array, 2, axis=0), atol=0.05)
    info = out.metadata["super_resolution"]
    assert info["axis"] == "z" and info["planes"] == ["coronal", "sagittal"]
    assert info["slice_profile"]["thickness_mm"] == pytest.approx(4.0)


# ---------------------------------------------------------------------------
# training and fine-tuning
# ---------------------------------------------------------------------------
def test_training_on_a_tiny_budget_reduces_the_restoration_loss():
    """The HQGAN generator (with its quantum block), trained self-supervised for 100 small steps on
    in-plane patches, restores box-averaged held-out patches better than before (= linear interpolation)."""
    import torch

    from QHQGANLib.training.through_plane import ZTrainConfig, restoration_loss, train_through_plane

    series = _series()
    train = Volume(series.array[:8, 150:350, 100:300], series.spacing)
    held_out = Volume(series.array[14:20, 150:350, 100:300], series.spacing)
    cfg = ZTrainConfig(arch="hqgan", scale=2, steps=100, batch_size=8, patch_size=32, lr=3e-3, seed=0,
                       ssim_weight=0.0)
    x, y = (torch.from_numpy(a) for a in PatchSampler([held_out], 32, np.random.default_rng(5)).pairs(16, 2))
    from QHQGANLib.training.through_plane import build_z_model

    torch.manual_seed(cfg.seed)
    before = restoration_loss(build_z_model(cfg), x, y)
    assert before == pytest.approx(float((x - y).abs().mean()), rel=1e-3)  # the identity: linear interpolation
    model = train_through_plane(cfg, [train])
    after = restoration_loss(model, x, y)
    assert after < 0.96 * before, (before, after)  # measured: 8.85 -> 8.27 HU
    assert model.quantum_layer() is not None and model.card["axis"] == "z"


def test_fine_tuning_on_the_volume_reports_progress_and_cancels():
    import threading

    from QHQGANLib.core.progress import OperationCancelled
    from QHQGANLib.tasks.through_plane import fine_tune

    thick = thick_slices(_crop(_series(), nz=12, size=64), 3)
    seen = []
    out = q.super_resolve(thick, 3, axis="z", fine_tune_steps=3, progress=lambda f, m: seen.append((f, m)),
                          device="cpu")
    assert out.shape == (thick.shape[0] * 3, 64, 64) and out.metadata["super_resolution"]["fine_tune_steps"] == 3
    assert any("fine-tuning step 3/3" in m for _, m in seen) and seen[-1][0] == 1.0
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))
    stop = threading.Event()
    stop.set()
    with pytest.raises(OperationCancelled):
        fine_tune(None, thick, 3, steps=5, cancel=stop)
    model = _untrained()
    tuned = fine_tune(model, thick, 2, steps=2)
    assert tuned is not model and tuned.card["fine_tuned"]["steps"] == 2


# ---------------------------------------------------------------------------
# errors, the default model, the CLI and the background runner's request
# ---------------------------------------------------------------------------
def test_missing_model_says_to_fine_tune_or_train_and_wrong_models_are_refused():
    from QHQGANLib.core.kinds import default_model, models_for_task
    from QHQGANLib.tasks.through_plane import NoThroughPlaneModel

    thick = thick_slices(_crop(_series()), 3)
    assert default_model("super-resolve", 3, axis="z") == "hqgan-srz3"
    assert all(c.get("axis") == "z" for c in models_for_task("super-resolve", axis="z"))
    assert all(c.get("axis", "in-plane") == "in-plane" for c in models_for_task("super-resolve", axis="in-plane"))
    if not any(c["name"] == "hqgan-srz3" for c in models_for_task("super-resolve", axis="z")):
        with pytest.raises(NoThroughPlaneModel, match=r"no through-plane model for x3 .*fine_tune_steps=200.*train"):
            q.super_resolve(thick, 3, axis="z")
    with pytest.raises(ValueError, match="not a through-plane"):
        q.super_resolve(thick, 2, axis="z", model=q.load_model(default_model("super-resolve", 2)))
    with pytest.raises(ValueError, match="restores x2 thick slices, not x3"):
        q.super_resolve(thick, 3, axis="z", model=_untrained(scale=2))
    with pytest.raises(ValueError, match="scale must be 2, 3 or 4"):
        q.super_resolve(thick, 5, axis="z", model=_untrained())
    with pytest.raises(ValueError, match="fine_tune_steps is for through-plane"):
        q.super_resolve(thick, 2, fine_tune_steps=3)
    with pytest.raises(ValueError, match="at least 2 slices"):
        q.super_resolve(Volume(thick.array[:1], thick.spacing), 2, axis="z", model=_untrained())


def test_cli_super_resolves_slices_with_exact_geometry(tmp_path, capsys):
    from QHQGANLib.apps.cli import build_parser, main

    thick = thick_slices(_oblique(_crop(_series(), nz=8, y0=130)), 2)  # the anterior wall: air, fat and muscle
    source = tmp_path / "thick.nrrd"
    q.write_volume(thick, source)
    args = build_parser().parse_args(["super-resolve", str(source), "o.nrrd", "--axis", "z", "--scale", "4",
                                      "--fine-tune-steps", "7"])
    assert (args.axis, args.scale, args.fine_tune_steps) == ("z", 4, 7)
    for argv, words in ((["--scale", "3"], "scale must be 2 for in-plane super-resolution"),
                        (["--axis", "z", "--scale", "5"], "scale must be 2, 3 or 4"),
                        (["--fine-tune-steps", "3"], "fine_tune_steps is for through-plane"),
                        (["--axis", "y"], "axis must be in-plane or z")):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["super-resolve", "in.nrrd", "out.nrrd"] + argv)
        assert words in capsys.readouterr().err
    out = tmp_path / "thin.nrrd"
    assert main(["super-resolve", str(source), str(out), "--axis", "z", "--scale", "2", "--fine-tune-steps", "2",
                 "--device", "cpu", "--quiet"]) == 0
    result = q.read_volume(out)
    spacing, origin = thin_grid(thick, 2)
    assert result.shape == (8, 64, 64)
    np.testing.assert_allclose(result.spacing, spacing, atol=1e-5)
    np.testing.assert_allclose(result.origin, origin, atol=1e-4)
    np.testing.assert_allclose(result.direction, thick.direction, atol=1e-6)
    from QHQGANLib.core.kinds import models_for_task

    if not any(c["name"] == "hqgan-srz4" for c in models_for_task("super-resolve", axis="z")):
        assert main(["super-resolve", str(source), str(tmp_path / "x4.nrrd"), "--axis", "z", "--scale", "4"]) == 2
        assert re.search(r"no through-plane model for x4 .*--fine-tune-steps", capsys.readouterr().err)
        assert not (tmp_path / "x4.nrrd").exists()


def test_task_request_round_trips_axis_scale_and_fine_tuning():
    from QHQGANLib.apps.cli import build_parser
    from QHQGANLib.apps.request import TaskRequest, build_command, default_output_name

    request = TaskRequest("super-resolve", axis="z", scale=4, fine_tune_steps=20, device="cpu")
    args = build_parser().parse_args(build_command(request, "in.nrrd", "out.nrrd", "python")[3:])
    assert (args.axis, args.scale, args.fine_tune_steps, args.device) == ("z", 4, 20, "cpu")
    assert request.output_suffix() == "SRz4" and request.model_name() == "hqgan-srz4"
    assert request.attributes()["axis"] == "z" and request.attributes()["fine_tune_steps"] == 20

    class Node:
        def GetName(self):
            return "CTChest"

    assert default_output_name(request, Node()) == "CTChest_SRz4"
    assert TaskRequest("super-resolve").output_suffix() == "SRx2"
    with pytest.raises(ValueError, match="scale must be 2 for in-plane"):
        TaskRequest("super-resolve", scale=4)
    with pytest.raises(ValueError, match=re.escape("fine_tune_steps must be in [0, 5000]")):
        TaskRequest("super-resolve", axis="z", fine_tune_steps=6000)
    assert TaskRequest("enhance", axis="z", scale=3).task == "enhance"  # other tasks ignore the pair


def test_patch_sampler_degrades_the_first_axis_only():
    series = _series()
    sampler = PatchSampler([series], 48, np.random.default_rng(0))
    x, y = sampler.pairs(6, 3)
    assert x.shape == y.shape == (6, 1, 48, 48)
    np.testing.assert_allclose(x[:, 0], degrade_batch(y[:, 0], 3), atol=1e-4)
    # the second axis is untouched: a patch constant along the first axis passes unchanged
    flat = np.repeat(y[:, 0, :1], 48, axis=1)
    np.testing.assert_allclose(degrade_batch(flat, 3), flat, atol=1e-3)
