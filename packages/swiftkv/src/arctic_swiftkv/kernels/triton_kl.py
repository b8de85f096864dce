"""Triton kernel of the fused KL: one program per row, online softmax of both logits over the vocabulary.

Loop 1 keeps, for the student and the teacher (logits divided by T), the running maximum m and the
sum of exp(x - m), rescaled whenever m grows, and A = sum_v exp(t_v - m_t)(t_v - s_v) likewise; then

    KL = A / Z_t - (m_t + log Z_t) + (m_s + log Z_s)

Loop 2 writes the gradient T (q - p) with the final normalisers. Nothing vocabulary-wide is
materialised besides the gradient itself. Imported only on the CUDA path (or under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _fused_kl_kernel(
    student_ptr,
    teacher_ptr,
    grad_ptr,
    value_ptr,
    vocab,
    student_stride,
    teacher_stride,
    grad_stride,
    temperature,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    student_row = student_ptr + row * student_stride
    teacher_row = teacher_ptr + row * teacher_stride
    grad_row = grad_ptr + row * grad_stride
    inv_t = 1.0 / temperature
    m_s = tl.zeros([], dtype=tl.float32) - float("inf")
    m_t = tl.zeros([], dtype=tl.float32) - float("inf")
    z_s = tl.zeros([], dtype=tl.float32)
    z_t = tl.zeros([], dtype=tl.float32)
    acc = tl.zeros([], dtype=tl.float32)
    for start in range(0, vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < vocab
        s = tl.load(student_row + cols, mask=mask, other=float("-inf")).to(tl.float32) * inv_t
        t = tl.load(teacher_row + cols, mask=mask, other=float("-inf")).to(tl.float32) * inv_t
        new_s = tl.maximum(m_s, tl.max(s, axis=0))
        z_s = z_s * tl.exp(m_s - new_s) + tl.sum(tl.exp(s - new_s), axis=0)
        m_s = new_s
        new_t = tl.maximum(m_t, tl.max(t, axis=0))
        rescale = tl.exp(m_t - new_t)
        e_t = tl.exp(t - new_t)
        diff = tl.where(mask, t - s, 0.0)
        acc = acc * rescale + tl.sum(e_t * diff, axis=0)
        z_t = z_t * rescale + tl.sum(e_t, axis=0)
        m_t = new_t
    lse_s = m_s + tl.log(z_s)
    lse_t = m_t + tl.log(z_t)
    kl = acc / z_t - lse_t + lse_s
    tl.store(value_ptr + row, kl * temperature * temperature)
    for start in range(0, vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < vocab
        s = tl.load(student_row + cols, mask=mask, other=0.0).to(tl.float32) * inv_t
        t = tl.load(teacher_row + cols, mask=mask, other=0.0).to(tl.float32) * inv_t
        grad = (tl.exp(s - lse_s) - tl.exp(t - lse_t)) * temperature
        tl.store(grad_row + cols, grad, mask=mask)


def kl_value_and_grad(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, block: int = BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row T^2 KL `[N]` and its gradient wrt the student's logits `[N, V]`, both fp32."""
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(
            f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)}: need equal [N, V]"
        )
    student, teacher = student.contiguous(), teacher.contiguous()
    rows, vocab = student.shape
    grad = torch.empty(rows, vocab, dtype=torch.float32, device=student.device)
    value = torch.empty(rows, dtype=torch.float32, device=student.device)
    if rows:
        _fused_kl_kernel[(rows,)](
            student,
            teacher,
            grad,
            value,
            vocab,
            student.stride(0),
            teacher.stride(0),
            grad.stride(0),
            float(temperature),
            BLOCK=min(block, triton.next_power_of_2(vocab)),
        )
    return value, grad
