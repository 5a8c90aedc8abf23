"""Camera poses and Plücker ray maps for the multiview task.

Conventions
-----------
- Camera-to-world matrices (``c2w``) given to and returned by this module are 4x4 in the **OpenGL**
  convention: camera x right, y up, z backward (the camera looks along its -z axis).
- Internally poses are converted to the **OpenCV** convention (x right, y down, z forward) with
  ``G = diag(1, -1, -1, 1)``: ``c2w_cv = c2w_gl @ G``.
- Only poses relative to camera 0 matter: camera ``i`` is expressed in camera 0's frame,
  ``C_i = inv(c2w_cv_0) @ c2w_cv_i`` (camera 0 becomes the identity).
- Intrinsics are normalised by the image size: ``K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` maps
  a camera-frame direction to ``(u, v, 1)`` with ``u, v`` in ``[0, 1]`` (``u`` left to right, ``v``
  top to bottom). The default is ``fx = fy = 1.3887``, ``(cx, cy) = (0.5, 0.5)``.
- A ray map has one ray per latent pixel, at pixel centres ``u = (col + 0.5) / size``,
  ``v = (row + 0.5) / size``, indexed ``[view, row, col, channel]`` with channels
  ``[dir_x, dir_y, dir_z, m_x, m_y, m_z]`` (unit direction and moment ``m = origin x dir``).
  Rays are expressed in camera 0's *pytorch3d view frame*, i.e. camera 0's OpenCV frame with x and
  y flipped (``F = diag(-1, -1, 1)``), which is the frame the model was trained with.
- The model sees a ray map as a 16-channel latent frame: channels ``[r(6), r(6), r[:4]]`` scaled by
  ``RAY_SCALE``, channel-first.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

DEFAULT_FOCAL = 1.3887
RAY_SCALE = 1.658
RAY_CHANNELS = 16  # channels of a model frame: [r(6), r(6), r[:4]]

_G = (1.0, -1.0, -1.0, 1.0)  # OpenGL <-> OpenCV camera axes (diagonal)
_F = (-1.0, -1.0, 1.0)  # OpenCV -> pytorch3d view axes (diagonal)


def _diag(values: Tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """Diagonal matrix of ``values`` with ``like``'s dtype and device."""
    return torch.diag(torch.tensor(values, dtype=like.dtype, device=like.device))


def c2w_from_spherical(azimuth_deg: float, elevation_deg: float, distance: float) -> torch.Tensor:
    """OpenGL camera-to-world (float64, 4x4) of a camera on a sphere looking at the origin (world up +Z)."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    position = distance * torch.tensor(
        [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], dtype=torch.float64
    )
    forward = position / position.norm()  # camera +z points away from the origin
    right = torch.linalg.cross(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), forward)
    if right.norm() < 1e-6:  # looking straight up or down
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), forward)
    right = right / right.norm()
    up = torch.linalg.cross(forward, right)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = torch.stack([right, up, forward], dim=1)
    c2w[:3, 3] = position
    return c2w


def camera_matrix(spec: dict) -> torch.Tensor:
    """The OpenGL c2w (float64) of a camera as a plan gives it: its `c2w`, else azimuth, elevation, distance."""
    if spec.get("c2w") is not None:
        return torch.tensor(spec["c2w"], dtype=torch.float64)
    return c2w_from_spherical(spec["azimuth"], spec["elevation"], spec["distance"])


def default_intrinsics(n: int, focal: float = DEFAULT_FOCAL, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(n, 3, 3) normalised intrinsics with focal ``focal`` and the principal point at the image centre."""
    K = torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.expand(n, 3, 3).clone()


def relative_c2ws(c2ws: torch.Tensor) -> torch.Tensor:
    """OpenGL poses relative to camera 0: ``inv(c2w_0) @ c2w_i`` (camera 0 becomes the identity)."""
    return torch.linalg.inv(c2ws[:1]) @ c2ws


def _relative_cv(c2ws: torch.Tensor) -> torch.Tensor:
    """Camera ``i``'s OpenCV pose in camera 0's OpenCV frame: ``G @ inv(c2w_0) @ c2w_i @ G``."""
    G = _diag(_G, c2ws)
    return G @ relative_c2ws(c2ws) @ G


def _pixel_grid(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(h*w, 3) homogeneous pixel centres ``(u, v, 1)``, row-major (row = v, col = u)."""
    v = (torch.arange(h, dtype=like.dtype, device=like.device) + 0.5) / h
    u = (torch.arange(w, dtype=like.dtype, device=like.device) + 0.5) / w
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv, torch.ones_like(uu)], dim=-1).reshape(-1, 3)


def plucker_rays(c2ws: torch.Tensor, size: int, intrinsics: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Plücker ray maps ``(N, size, size, 6)`` of OpenGL cameras ``(N, 4, 4)``, relative to camera 0.

    Computed in float64; returned in ``c2ws``'s floating dtype (float32 for other dtypes).
    """
    out_dtype = c2ws.dtype if c2ws.is_floating_point() else torch.float32
    c2ws = c2ws.to(torch.float64)
    n = c2ws.shape[0]
    K = default_intrinsics(n) if intrinsics is None else intrinsics.to(torch.float64)
    C = _relative_cv(c2ws)
    pixels = _pixel_grid(size, size, c2ws)  # (P, 3)
    rays_cam = torch.linalg.inv(K.to(c2ws.device)) @ pixels.T  # (N, 3, P) camera-frame directions
    F = torch.tensor(_F, dtype=c2ws.dtype, device=c2ws.device)
    dirs = (C[:, :3, :3] @ rays_cam).transpose(1, 2) * F
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = (C[:, None, :3, 3] * F).expand_as(dirs)
    moments = torch.linalg.cross(origins, dirs, dim=-1)
    return torch.cat([dirs, moments], dim=-1).reshape(n, size, size, 6).to(out_dtype)


def rays_to_frame(rays: torch.Tensor) -> torch.Tensor:
    """Ray maps ``(N, h, w, 6)`` -> model frames ``(N, 16, h, w)``: ``[r, r, r[:4]] * RAY_SCALE``."""
    tiled = torch.cat([rays, rays, rays[..., :4]], dim=-1) * RAY_SCALE
    return tiled.permute(0, 3, 1, 2).contiguous()


def frame_to_rays(frame: torch.Tensor) -> torch.Tensor:
    """Model frames ``(N, 16, h, w)`` -> ray maps ``(N, h, w, 6)``, averaging the tiled copies."""
    r = frame.permute(0, 2, 3, 1) / RAY_SCALE
    first4 = (r[..., 0:4] + r[..., 6:10] + r[..., 12:16]) / 3
    last2 = (r[..., 4:6] + r[..., 10:12]) / 2
    return torch.cat([first4, last2], dim=-1).contiguous()


def camera_frames(c2ws: torch.Tensor, size: int, intrinsics: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Model frames ``(N, 16, size, size)`` of OpenGL cameras: ``rays_to_frame(plucker_rays(...))``."""
    return rays_to_frame(plucker_rays(c2ws, size, intrinsics))


def _cauchy_weights(residuals: torch.Tensor) -> torch.Tensor:
    """IRLS weights ``1 / (1 + (r / c)^2)`` per ray, ``c = 3 x`` the median residual of each view: rays
    that fit like the bulk keep a weight near 1, gross outliers (a broken patch of a generated ray map)
    fade out."""
    scale = 3.0 * residuals.median(dim=-1, keepdim=True).values.clamp_min(1e-12)
    return 1.0 / (1.0 + (residuals / scale) ** 2)


def _fit_projection(dirs: torch.Tensor, pixels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) matrices ``M`` with ``dirs ∝ M @ pixels``, ``det(M) > 0``, for unit ``dirs`` (N, P, 3).

    Minimises ``Σ w |d × M p|² / Σ w |M p|²`` (a generalised eigenproblem). Noise on a unit direction adds
    a term proportional to ``|M p|²`` to ``|d × M p|²``, so dividing by ``Σ w |M p|²`` leaves the noise-free
    minimiser in place: unlike the plain DLT (``|M| = 1``), the fit does not drift towards a shorter focal
    length as the noise grows."""
    eye = torch.eye(3, dtype=dirs.dtype, device=dirs.device)
    d = dirs.unsqueeze(-2).expand(*dirs.shape[:-1], 3, 3)
    cross_e = torch.linalg.cross(d, eye.expand_as(d), dim=-1)  # [n, p, i, eq] = cross(d_p, e_i)
    A = torch.einsum("npie,pj->npeij", cross_e, pixels).reshape(dirs.shape[0], -1, 9)
    lhs = (A * weights.repeat_interleave(3, dim=1).unsqueeze(-1)).transpose(1, 2) @ A
    P = (pixels.T * weights.unsqueeze(1)) @ pixels
    rhs = torch.block_diag(*([torch.ones(3, 3, dtype=dirs.dtype)] * 3)).to(dirs.device) * P.repeat(1, 3, 3)
    L = torch.linalg.cholesky(rhs)
    Linv = torch.linalg.inv(L)
    values, vectors = torch.linalg.eigh(Linv @ lhs @ Linv.transpose(-1, -2))
    M = (Linv.transpose(-1, -2) @ vectors[..., :1]).reshape(-1, 3, 3)
    return M * torch.sign(torch.linalg.det(M)).reshape(-1, 1, 1)


def _direction_residuals(dirs: torch.Tensor, M: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """(N, P) sine of the angle between each ray and the direction ``M`` gives its pixel."""
    predicted = torch.nn.functional.normalize((M @ pixels.T).transpose(1, 2), dim=-1)
    return torch.linalg.cross(dirs, predicted, dim=-1).norm(dim=-1)


def _ray_centres(dirs: torch.Tensor, moments: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, 3) points ``c`` that best satisfy ``m = c × d`` over each view's rays (weighted least squares).

    ``dirs`` are the directions the fitted rotation and intrinsics give each pixel, not the observed
    ones: noise on the observed directions would inflate ``Σ (I - d dᵀ)`` and pull the centres towards
    the origin (mostly along the optical axis), while noise on the moments averages out."""
    eye = torch.eye(3, dtype=dirs.dtype, device=dirs.device)
    w = weights.unsqueeze(-1)
    normal = weights.sum(dim=1).view(-1, 1, 1) * eye - (dirs * w).transpose(1, 2) @ dirs  # Σ w (I - d dᵀ)
    rhs = (w.transpose(1, 2) @ torch.linalg.cross(dirs, moments, dim=-1)).squeeze(1)  # Σ w (d × m)
    # lstsq: degenerate (parallel) rays do not raise
    return torch.linalg.lstsq(normal, rhs.unsqueeze(-1)).solution.squeeze(-1)


def _rq(M: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``M = R @ U`` with ``R`` a rotation and ``U`` upper triangular with positive diagonal (``det M > 0``)."""
    Q, U = torch.linalg.qr(M)
    signs = torch.sign(torch.diagonal(U, dim1=-2, dim2=-1))
    return Q * signs.unsqueeze(-2), U * signs.unsqueeze(-1)


def _det3(A: torch.Tensor) -> torch.Tensor:
    """Determinants of (..., 3, 3) matrices (closed form: cheaper than a LAPACK call for tiny batches)."""
    return (torch.linalg.cross(A[..., 0, :], A[..., 1, :], dim=-1) * A[..., 2, :]).sum(dim=-1)


def _rotation_for_focal(weighted_dirs: torch.Tensor, x: torch.Tensor, y: torch.Tensor, focal: torch.Tensor
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each view's focal length: the rotation ``R`` that best maps the unit pixel directions
    ``q = (x, y, f) / |(x, y, f)|`` (pixel offsets ``x, y`` from the principal point) onto the rays
    (a weighted Wahba problem, by SVD of ``H = Σ w d qᵀ``) and its score ``Σ w dᵀ R q``."""
    f = focal[:, None]
    inv = torch.rsqrt(x.square() + y.square() + f.square())  # (N, P)
    q = torch.stack([x * inv, y * inv, f * inv], dim=-1)  # (N, P, 3)
    H = weighted_dirs.transpose(1, 2) @ q
    U, S, Vh = torch.linalg.svd(H)
    sign = torch.sign(_det3(U @ Vh))
    D = torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], dim=-1)
    return U @ torch.diag_embed(D) @ Vh, (S * D).sum(dim=-1)


def _fit_rotation_focal(dirs: torch.Tensor, pixels: torch.Tensor, weights: torch.Tensor, focal0: torch.Tensor,
                        centre: Tuple[float, float], steps: int = 24) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotation and focal length (square pixels, no skew, principal point ``centre``) of each view:
    golden-section search of the focal length in ``[focal0 / 2, 2 focal0]``, the rotation in closed form.
    Linear in ``dirs``, so zero-mean noise on them does not bias the result."""
    wd = dirs * weights.unsqueeze(-1)
    x, y = (pixels[:, 0] - centre[0]).expand_as(weights), (pixels[:, 1] - centre[1]).expand_as(weights)

    def score(log_f: torch.Tensor) -> torch.Tensor:
        return _rotation_for_focal(wd, x, y, log_f.exp())[1]

    lo, hi = (focal0 / 2).log(), (focal0 * 2).log()
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = score(a), score(b)
    for _ in range(steps):
        left = fa > fb  # the maximum is in [lo, b]
        lo, hi = torch.where(left, lo, a), torch.where(left, b, hi)
        new_a, new_b = hi - g * (hi - lo), lo + g * (hi - lo)
        a, b = torch.where(left, new_a, b), torch.where(left, a, new_b)
        probe = score(torch.where(left, a, b))  # one new point per step
        fa, fb = torch.where(left, probe, fb), torch.where(left, fa, probe)
    focal = ((lo + hi) / 2).exp()
    return _rotation_for_focal(wd, x, y, focal)[0], focal


def recover_cameras(
    rays: torch.Tensor, relative: bool = True, iterations: int = 8,
    principal_point: Optional[Tuple[float, float]] = (0.5, 0.5),
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`plucker_rays`: ray maps ``(N, h, w, 6)`` -> float32 OpenGL c2ws ``(N, 4, 4)`` and
    normalised intrinsics ``(N, 3, 3)``.

    With ``relative`` the poses are re-expressed relative to camera 0 (which becomes exactly the
    identity); without, they are in the frame the rays are expressed in (that of the first given camera).

    Generated ray maps are noisy and can have broken patches, so each view is fitted by iteratively
    reweighted least squares (Cauchy weights) over its whole ray bundle: directions give rotation and
    intrinsics, moments the centre, neither biased by the noise.

    Intrinsics follow the model's convention by default: square pixels, no skew, the principal point at
    ``principal_point`` (the image centre), one focal length per view. Under noise a free principal point
    trades off against the rotation (for a narrow field of view the two move the rays almost alike), so
    fixing it makes rotations several times more accurate. ``principal_point=None`` fits a general K."""
    n, h, w, _ = rays.shape
    rays = rays.to(torch.float64).reshape(n, h * w, 6)
    F = torch.tensor(_F, dtype=rays.dtype, device=rays.device)
    raw_dirs, moments = rays[..., :3] * F, rays[..., 3:] * F
    norms = raw_dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    dirs, moments = raw_dirs / norms, moments / norms  # Plücker coordinates are homogeneous
    pixels = _pixel_grid(h, w, rays)

    weights = torch.ones(n, h * w, dtype=rays.dtype, device=rays.device)
    for _ in range(iterations if principal_point is None else min(iterations, 3)):  # else only a start
        M = _fit_projection(dirs, pixels, weights)
        residuals = _direction_residuals(dirs, M, pixels)
        weights = _cauchy_weights(residuals)
    M = _fit_projection(dirs, pixels, weights)
    R, U = _rq(M)
    K = torch.linalg.inv(U)
    K = K / K[:, 2:3, 2:3]
    if principal_point is not None:
        focal = ((K[:, 0, 0] + K[:, 1, 1]) / 2).clamp(0.05, 50.0)
        for _ in range(max(1, iterations // 2)):
            R, focal = _fit_rotation_focal(dirs, pixels, weights, focal, principal_point)
            K = torch.zeros_like(K)
            K[:, 0, 0], K[:, 1, 1], K[:, 2, 2] = focal, focal, 1.0
            K[:, 0, 2], K[:, 1, 2] = principal_point
            M = R @ torch.linalg.inv(K)
            weights = _cauchy_weights(_direction_residuals(dirs, M, pixels))
    fitted = torch.nn.functional.normalize((M @ pixels.T).transpose(1, 2), dim=-1)
    ray_weights = weights
    centres = _ray_centres(fitted, moments, ray_weights)
    for _ in range(iterations):
        moment_residuals = (moments - torch.linalg.cross(centres.unsqueeze(1), fitted, dim=-1)).norm(dim=-1)
        ray_weights = weights * _cauchy_weights(moment_residuals)
        centres = _ray_centres(fitted, moments, ray_weights)

    C = torch.eye(4, dtype=rays.dtype, device=rays.device).repeat(n, 1, 1)
    C[:, :3, :3], C[:, :3, 3] = R, centres
    G = _diag(_G, rays)
    c2ws = G @ C @ G
    return (relative_c2ws(c2ws) if relative else c2ws).float(), K.float()
