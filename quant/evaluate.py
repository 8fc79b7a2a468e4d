"""End-to-end and per-block error of a ternary FLUX against its float teacher.

For each input (a calibration sample, ComfyUI convention) both models are run and compared:

* **velocity** (end to end): ``||v_student - v_teacher|| / ||v_teacher||``, the figure that
  matters: it is the error of each sampler step's direction.
* **local** per block: the student block fed the *teacher's* block input, error of its residual
  update relative to the teacher's update, ``||s(in_t) - t(in_t)|| / ||t(in_t) - in_t||``.
* **stream** per block: the student's own hidden state after the block (errors accumulated
  from earlier blocks) vs the teacher's, ``||h_s - h_t|| / ||h_t||``.

Ratios are aggregated over samples as ``sqrt(sum num^2 / sum den^2)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.calibration_data import CalibrationSample
from .capture import BlockCapture, flatten_outputs


def block_names(model: nn.Module) -> list[str]:
    """The block paths of a FLUX.1 (:class:`Flux`) or FLUX.2 (``Flux2``) model, in run order."""
    return [f"double_blocks.{i}" for i in range(len(model.double_blocks))] + [
        f"single_blocks.{i}" for i in range(len(model.single_blocks))
    ]


class _Acc:
    def __init__(self) -> None:
        self.num = 0.0
        self.den = 0.0

    def add(self, a: torch.Tensor, b: torch.Tensor, ref: torch.Tensor) -> None:
        self.num += float((a.float() - b.float()).pow(2).sum())
        self.den += float(ref.float().pow(2).sum())

    @property
    def value(self) -> float:
        return math.sqrt(self.num / self.den) if self.den > 0 else float("nan")


@torch.no_grad()
def compare_models(
    teacher: nn.Module,
    student: nn.Module,
    samples: Sequence[CalibrationSample],
    device=None,
    per_block: bool = True,
) -> dict[str, Any]:
    """Errors of ``student`` vs ``teacher`` (both :class:`Flux` or both ``Flux2``) on ``samples``
    (see module docstring)."""
    device = device or next(teacher.parameters()).device
    names = block_names(teacher) if per_block else []
    local = {n: _Acc() for n in names}
    stream = {n: _Acc() for n in names}
    vel = _Acc()
    per_sample = []
    for s in samples:
        inp = s.as_inputs(device, torch.float32)
        with BlockCapture(teacher, names) as tcap, BlockCapture(student, names, inputs=False) as scap:
            vt = teacher.forward_latent(**inp)
            vs = student.forward_latent(**inp)
        vel.add(vs, vt, vt)
        per_sample.append(float((vs - vt).norm() / vt.norm().clamp_min(1e-12)))
        for n in names:
            args, kwargs, t_out = tcap.last(n)
            loc = flatten_outputs(student.get_submodule(n)(*args, **kwargs))
            for j, (o_s, o_t) in enumerate(zip(loc, t_out)):
                local[n].add(o_s, o_t, o_t - args[j])
            for o_s, o_t in zip(scap.last(n)[2], t_out):
                stream[n].add(o_s, o_t, o_t)
    return {
        "velocity_rel_err": vel.value,
        "velocity_rel_err_per_sample": per_sample,
        "num_samples": len(samples),
        "blocks": [
            {"block": n, "local_rel_err": local[n].value, "stream_rel_err": stream[n].value} for n in names
        ],
    }


def velocity_error(
    teacher: nn.Module, student: nn.Module, samples: Sequence[CalibrationSample], device=None
) -> float:
    return compare_models(teacher, student, samples, device, per_block=False)["velocity_rel_err"]


@torch.no_grad()
def cached_velocity_error(
    model: nn.Module, cache, samples: Sequence[CalibrationSample], offset: int = 0, device=None
) -> float:
    """:func:`velocity_error` against the teacher velocities of a
    :class:`~.teacher_cache.TeacherCache` (sample ``j`` is cached as ``offset + j``)."""
    vel = _Acc()
    for j, s in enumerate(samples):
        vt = cache.velocity(offset + j, device)
        vel.add(model.forward_latent(**s.as_inputs(device, torch.float32)).float(), vt, vt)
    return vel.value
