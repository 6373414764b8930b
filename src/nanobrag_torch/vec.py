"""3-vector helpers on tensors of shape (..., 3), in the C's operation order.

nanoBragg.c spells out every dot product, cross product and rotation
component by component; doing the same here (rather than with matmul) keeps
float64 results equal to the C's to the last bit where that is cheap, which
matters when an image is rounded to float32 and then to integers.
"""
from __future__ import annotations

import torch


def as_tensor(x, dtype, device) -> torch.Tensor:
    """A config value (float, list, numpy array or tensor) as a tensor on dtype/device.

    Tensors keep their autograd history (the cast is differentiable).
    """
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype, device=device)
    return torch.as_tensor(x, dtype=dtype, device=device)


def value(x) -> float:
    """A scalar config value (float or tensor) as a Python float, for static decisions.

    Detached first: a decision such as a step count is taken on the value and
    carries no gradient (and a tensor with requires_grad converts silently).
    """
    if isinstance(x, torch.Tensor):
        return float(x.detach())
    return float(x)


def dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x . y summed left to right, as the C's dot_product."""
    return x[..., 0] * y[..., 0] + x[..., 1] * y[..., 1] + x[..., 2] * y[..., 2]


def cross(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x cross y, as the C's cross_product."""
    return torch.stack((x[..., 1] * y[..., 2] - x[..., 2] * y[..., 1],
                        x[..., 2] * y[..., 0] - x[..., 0] * y[..., 2],
                        x[..., 0] * y[..., 1] - x[..., 1] * y[..., 0]), dim=-1)


def magnitude(x: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(x[..., 0] * x[..., 0] + x[..., 1] * x[..., 1] + x[..., 2] * x[..., 2])


def unitize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x/|x|, |x|); a zero vector stays zero (as the C), with finite gradients."""
    mag = magnitude(x)
    safe = torch.where(mag == 0, torch.ones_like(mag), mag)
    unit = torch.where((mag == 0)[..., None], torch.zeros_like(x), x / safe[..., None])
    return unit, mag


def rotate_xyz(v: torch.Tensor, rx, ry, rz) -> torch.Tensor:
    """The C's rotate(): about lab X by rx, then Y by ry, then Z by rz (radians).

    v is (..., 3); the angles broadcast against v[..., 0]. A zero angle is an
    exact identity here too (cos 0 = 1, sin 0 = 0), so no branch is needed.
    """
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    c, s = torch.cos(rx), torch.sin(rx)
    y, z = y * c + z * (-s), y * s + z * c
    c, s = torch.cos(ry), torch.sin(ry)
    x, z = x * c + y * 0 + z * s, x * (-s) + y * 0 + z * c
    c, s = torch.cos(rz), torch.sin(rz)
    x, y = x * c + y * (-s), x * s + y * c
    return torch.stack((x, y, z), dim=-1)


def rotate_axis(v: torch.Tensor, axis: torch.Tensor, phi) -> torch.Tensor:
    """The C's rotate_axis(): Rodrigues rotation of v about a unit axis by phi (right-handed)."""
    sinphi, cosphi = torch.sin(phi), torch.cos(phi)
    d = dot(axis, v) * (1.0 - cosphi)
    ax, ay, az = axis[..., 0], axis[..., 1], axis[..., 2]
    vx, vy, vz = v[..., 0], v[..., 1], v[..., 2]
    return torch.stack((ax * d + vx * cosphi + (-az * vy + ay * vz) * sinphi,
                        ay * d + vy * cosphi + (az * vx - ax * vz) * sinphi,
                        az * d + vz * cosphi + (-ay * vx + ax * vy) * sinphi), dim=-1)


def rotate_umat(v: torch.Tensor, umat: torch.Tensor) -> torch.Tensor:
    """The C's rotate_umat(): U . v with U (..., 3, 3) row-major, rows summed left to right."""
    return torch.stack([umat[..., i, 0] * v[..., 0] + umat[..., i, 1] * v[..., 1]
                        + umat[..., i, 2] * v[..., 2] for i in range(3)], dim=-1)


def rotation_matrix_xyz(rx, ry, rz) -> torch.Tensor:
    """Matrix of rotate_xyz (Rz . Ry . Rx), for code that wants one (3, 3)."""
    eye = torch.eye(3, dtype=torch.as_tensor(rx).dtype, device=torch.as_tensor(rx).device)
    return rotate_xyz(eye, rx, ry, rz).transpose(-1, -2)
