"""Tests for model/cameras.py: spherical poses, Plücker ray maps, frame layout and camera recovery."""

import math

import pytest
import torch

from model.cameras import (
    DEFAULT_FOCAL,
    RAY_SCALE,
    c2w_from_spherical,
    camera_frames,
    frame_to_rays,
    plucker_rays,
    rays_to_frame,
    recover_cameras,
    relative_c2ws,
)

ANGLES = [(0, 0), (30, 10), (90, 20), (-45, -30), (180, 60), (270, 89)]


def _random_rotation(gen: torch.Generator) -> torch.Tensor:
    Q, R = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(R))
    return Q if torch.linalg.det(Q) > 0 else -Q


def _spherical_rig(azimuths, elevations, distances) -> torch.Tensor:
    return torch.stack([c2w_from_spherical(a, e, d) for a, e, d in zip(azimuths, elevations, distances)])


def _random_c2ws(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    c2ws = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    for c2w in c2ws:
        c2w[:3, :3] = _random_rotation(gen)
        c2w[:3, 3] = torch.randn(3, generator=gen, dtype=torch.float64)
    return c2ws


def _intrinsics(n: int, focal: float, cx: float, cy: float) -> torch.Tensor:
    return torch.tensor([[focal, 0, cx], [0, focal, cy], [0, 0, 1]], dtype=torch.float64).repeat(n, 1, 1)


def _is_rotation(R: torch.Tensor, tol: float = 1e-9) -> bool:
    eye = torch.eye(3, dtype=R.dtype)
    return torch.allclose(R.T @ R, eye, atol=tol) and abs(torch.linalg.det(R).item() - 1) < tol


# --- c2w_from_spherical ---------------------------------------------------------------------------


@pytest.mark.parametrize("az,el", ANGLES + [(0, 90), (40, -90)])
def test_spherical_rotation_is_proper(az, el):
    c2w = c2w_from_spherical(az, el, 1.5)
    assert c2w.shape == (4, 4)
    assert _is_rotation(c2w[:3, :3])
    assert torch.equal(c2w[3], torch.tensor([0.0, 0, 0, 1], dtype=c2w.dtype))


def test_spherical_position():
    c2w = c2w_from_spherical(0, 0, 2)
    assert torch.allclose(c2w[:3, 3], torch.tensor([2.0, 0, 0], dtype=c2w.dtype), atol=1e-12)
    c2w = c2w_from_spherical(90, 0, 1)
    assert torch.allclose(c2w[:3, 3], torch.tensor([0.0, 1, 0], dtype=c2w.dtype), atol=1e-12)


@pytest.mark.parametrize("az,el", ANGLES + [(0, 90)])
def test_spherical_looks_at_origin(az, el):
    distance = 1.7
    c2w = c2w_from_spherical(az, el, distance)
    position = c2w[:3, 3]
    assert math.isclose(position.norm().item(), distance, rel_tol=1e-12)
    view_dir = -c2w[:3, 2]  # OpenGL cameras look along -z
    assert torch.allclose(position + distance * view_dir, torch.zeros(3, dtype=c2w.dtype), atol=1e-12)


def test_spherical_up_is_world_up_at_horizon():
    c2w = c2w_from_spherical(30, 0, 1)
    assert torch.allclose(c2w[:3, 1], torch.tensor([0.0, 0, 1], dtype=c2w.dtype), atol=1e-12)


# --- plucker_rays ---------------------------------------------------------------------------------


def test_rays_shape_and_dtype():
    rays = plucker_rays(_spherical_rig([0, 30, 60], [0, 10, 20], [1.7] * 3), 8)
    assert rays.shape == (3, 8, 8, 6)
    assert rays.dtype == torch.float64
    assert plucker_rays(_random_c2ws(2, 0).float(), 4).dtype == torch.float32


@pytest.mark.parametrize("c2ws", [_spherical_rig([0, 45, 120], [0, 30, -10], [1.0, 2.0, 0.5]), _random_c2ws(4, 1)])
def test_rays_pass_through_camera_centre(c2ws):
    rays = plucker_rays(c2ws, 16)
    dirs, moments = rays[..., :3], rays[..., 3:]
    assert (dirs.norm(dim=-1) - 1).abs().max() < 1e-12
    assert (dirs * moments).sum(-1).abs().max() < 1e-12
    # Each view's rays share one origin: the camera centre in camera 0's pytorch3d view frame, i.e. its
    # OpenGL frame (x right, y up, z back) with x and z flipped (x left, y up, z forward).
    centres = relative_c2ws(c2ws)[:, :3, 3] * torch.tensor([-1.0, 1, -1], dtype=c2ws.dtype)
    expected = torch.linalg.cross(centres[:, None, None].expand_as(dirs), dirs, dim=-1)
    assert (expected - moments).abs().max() < 1e-12


def test_first_camera_is_identity_camera():
    size, f = 8, DEFAULT_FOCAL
    rays = plucker_rays(_spherical_rig([20, 50], [10, 0], [1.7, 1.7]), size)[0]
    t = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    v, u = torch.meshgrid(t, t, indexing="ij")
    d = torch.stack([(u - 0.5) / f, (v - 0.5) / f, torch.ones_like(u)], dim=-1)
    d = d / d.norm(dim=-1, keepdim=True) * torch.tensor([-1.0, -1, 1], dtype=d.dtype)
    assert torch.allclose(rays[..., :3], d, atol=1e-12)
    assert rays[..., 3:].abs().max() < 1e-12


def test_first_camera_orientation():
    rays = plucker_rays(c2w_from_spherical(10, 20, 1.0)[None], 5)[0]
    assert torch.allclose(rays[2, 2, :3], torch.tensor([0.0, 0, 1], dtype=rays.dtype), atol=1e-12)
    # top-left pixel: OpenCV direction (-, -, +) -> pytorch3d view frame (+, +, +)
    assert (rays[0, 0, :3] > 0).all()
    # top-right pixel: OpenCV (+, -, +) -> (-, +, +)
    assert rays[0, -1, 0] < 0 and rays[0, -1, 1] > 0


def test_rays_depend_only_on_relative_poses():
    c2ws = _random_c2ws(3, 2)
    world = _random_c2ws(1, 3)[0]
    assert torch.allclose(plucker_rays(c2ws, 8), plucker_rays(world @ c2ws, 8), atol=1e-10)


def test_intrinsics_change_rays():
    c2ws = _random_c2ws(2, 4)
    default = plucker_rays(c2ws, 8)
    assert torch.allclose(default, plucker_rays(c2ws, 8, _intrinsics(2, DEFAULT_FOCAL, 0.5, 0.5)), atol=1e-12)
    assert not torch.allclose(default, plucker_rays(c2ws, 8, _intrinsics(2, 1.1, 0.48, 0.52)), atol=1e-3)


# --- frame layout ---------------------------------------------------------------------------------


def test_frame_layout():
    rays = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    frame = rays_to_frame(rays)
    assert frame.shape == (3, 16, 4, 5)
    channels_last = frame.permute(0, 2, 3, 1)
    assert torch.allclose(channels_last[..., 0:6], rays * RAY_SCALE)
    assert torch.allclose(channels_last[..., 6:12], rays * RAY_SCALE)
    assert torch.allclose(channels_last[..., 12:16], rays[..., :4] * RAY_SCALE)
    assert torch.allclose(frame_to_rays(frame), rays, atol=1e-12)


def test_frame_to_rays_averages_copies():
    frame = torch.zeros(1, 16, 1, 1)
    frame[0, [0, 6, 12], 0, 0] = torch.tensor([1.0, 2.0, 3.0]) * RAY_SCALE
    frame[0, [5, 11], 0, 0] = torch.tensor([1.0, 3.0]) * RAY_SCALE
    rays = frame_to_rays(frame)[0, 0, 0]
    assert torch.allclose(rays[0], torch.tensor(2.0))
    assert torch.allclose(rays[5], torch.tensor(2.0))


def test_camera_frames():
    c2ws = _spherical_rig([0, 30, 60, 90], [0, 0, 0, 0], [1.7] * 4)
    frames = camera_frames(c2ws, 16)
    assert frames.shape == (4, 16, 16, 16)
    assert torch.allclose(frames, rays_to_frame(plucker_rays(c2ws, 16)))


# --- recovery -------------------------------------------------------------------------------------

RIGS = {
    "orbit": (_spherical_rig([0, 30, 60, 90], [0, 5, 10, 20], [1.7] * 4), None),
    "random_spherical": (_spherical_rig([12, 100, 200, 310, 45], [-20, 35, 5, 60, 0], [1.2, 2.5, 0.8, 1.7, 3.0]), None),
    "random_c2w": (_random_c2ws(5, 5), None),
    "intrinsics": (_random_c2ws(3, 6), _intrinsics(3, 1.1, 0.48, 0.52)),
    "mixed_intrinsics": (
        _spherical_rig([0, 90, 180], [10, 20, 30], [1.7] * 3),
        torch.cat([_intrinsics(1, 1.3887, 0.5, 0.5), _intrinsics(1, 0.9, 0.45, 0.55), _intrinsics(1, 2.0, 0.52, 0.5)]),
    ),
}


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("rig", list(RIGS))
def test_recover_cameras_round_trip(rig, size):
    c2ws, intrinsics = RIGS[rig]
    expected_K = (_intrinsics(len(c2ws), DEFAULT_FOCAL, 0.5, 0.5) if intrinsics is None else intrinsics).float()
    expected = relative_c2ws(c2ws).float()
    centred = intrinsics is None or bool((intrinsics[:, :2, 2] == 0.5).all())
    recovered, K = recover_cameras(plucker_rays(c2ws, size, intrinsics), principal_point=(0.5, 0.5) if centred else None)
    assert recovered.dtype == torch.float32 and K.dtype == torch.float32
    assert recovered.shape == (len(c2ws), 4, 4) and K.shape == (len(c2ws), 3, 3)
    assert torch.allclose(recovered[:, :3, :3], expected[:, :3, :3], atol=1e-3)
    assert torch.allclose(recovered[:, :3, 3], expected[:, :3, 3], atol=1e-3)
    assert torch.allclose(recovered[:, 3], expected[:, 3])
    assert torch.allclose(K, expected_K, atol=1e-3)
    assert torch.allclose(recovered[0], torch.eye(4), atol=1e-6)


def test_recover_cameras_from_model_frames():
    c2ws = RIGS["orbit"][0]
    recovered, _ = recover_cameras(frame_to_rays(camera_frames(c2ws, 32).float()))
    assert torch.allclose(recovered, relative_c2ws(c2ws).float(), atol=1e-3)


@pytest.mark.parametrize("rig", ["orbit", "random_c2w"])
def test_recover_cameras_with_noise(rig):
    c2ws, intrinsics = RIGS[rig]
    rays = plucker_rays(c2ws, 32, intrinsics)
    noisy = rays + 1e-3 * torch.randn(rays.shape, generator=torch.Generator().manual_seed(7), dtype=rays.dtype)
    recovered, K = recover_cameras(noisy)
    expected = relative_c2ws(c2ws).float()
    assert (recovered[:, :3, 3] - expected[:, :3, 3]).abs().max() < 1e-2
    assert (recovered[:, :3, :3] - expected[:, :3, :3]).abs().max() < 1e-2
    assert (K - _intrinsics(len(c2ws), DEFAULT_FOCAL, 0.5, 0.5).float()).abs().max() < 2e-2


def test_recover_cameras_ignores_broken_rays():
    """A fifth of the rays replaced by garbage (a broken patch of a generated map) barely moves the fit."""
    c2ws = RIGS["orbit"][0]
    rays = plucker_rays(c2ws, 32)
    gen = torch.Generator().manual_seed(3)
    broken = torch.rand(rays.shape[:-1], generator=gen) < 0.2
    broken[0] = False  # camera 0 is given
    rays[broken] = 2 * torch.randn((int(broken.sum()), 6), generator=gen, dtype=rays.dtype)
    recovered, K = recover_cameras(rays)
    expected = relative_c2ws(c2ws).float()
    assert (recovered[:, :3, :3] - expected[:, :3, :3]).abs().max() < 5e-3
    assert (recovered[:, :3, 3] - expected[:, :3, 3]).abs().max() < 1e-2
    assert (K[:, 0, 0] - DEFAULT_FOCAL).abs().max() < 1e-2


def test_pose_recovery_error_table_stays_small():
    """benchmarks/pose_recovery.py's table at low noise (its full run prints noise 0 to 0.2)."""
    from benchmarks.pose_recovery import errors

    clean = errors(0.0, seeds=1)
    assert clean["rotation_deg_max"] < 0.05 and clean["translation_dir_deg_max"] < 0.05 and clean["focal_rel_err_max"] < 1e-3
    noisy = errors(0.05, seeds=1)
    assert noisy["rotation_deg_max"] < 1.0 and noisy["translation_dir_deg_max"] < 1.0 and noisy["focal_rel_err_max"] < 0.02
