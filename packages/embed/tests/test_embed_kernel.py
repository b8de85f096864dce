"""The Triton InfoNCE block against its PyTorch reference, in Triton's interpreter on the CPU.

TRITON_INTERPRET must be set before triton is first imported, and the rest of the suite may
already have imported it, so the comparison runs in a fresh interpreter (the CHECK script
below) that checks nothing had imported triton, then sets it.
"""

from __future__ import annotations

import json

import pytest

from arctic_core.testing import run_in_triton_interpreter

pytest.importorskip("triton")

CHECK = r"""
import os, sys, json
assert "triton" not in sys.modules
os.environ["TRITON_INTERPRET"] = "1"
import torch
import torch.nn.functional as F
from arctic_core.kernels import select
from arctic_embed.kernels.infonce import TRITON_BLOCK, torch_backward, torch_forward, triton_backward, triton_forward
from arctic_embed.loss import build_targets, info_nce, info_nce_reference

def err(a, b):
    return float((a - b).abs().max() / (b.abs().max() + 1e-30))

picked = select("embed.infonce", "triton", torch.device("cpu"))
out = {"kernel": "triton" if picked is TRITON_BLOCK else "torch", "blocks": [], "loss": []}
g = torch.Generator().manual_seed(0)
# odd sizes: one row, rows and columns across tile edges (16/64), an embedding over 2 K-tiles
for rows, cols, dim, t in [(1, 3, 5, 0.02), (19, 37, 33, 0.05), (70, 67, 130, 0.02)]:
    q = F.normalize(torch.randn(rows, dim, generator=g), dim=-1)
    d = F.normalize(torch.randn(cols, dim, generator=g), dim=-1)
    allowed = torch.rand(rows, cols, generator=g) < 0.5
    target = torch.randint(0, cols, (rows,), generator=g)
    allowed[torch.arange(rows), target] = True
    scale = torch.tensor(0.7)
    lse, picked = torch_forward(q, d, allowed, target, t)
    lse_t, picked_t = triton_forward(q, d, allowed, target, t)
    dq, dd = torch_backward(q, d, allowed, target, lse, t, scale)
    dq_t, dd_t = triton_backward(q, d, allowed, target, lse_t, t, scale)
    out["blocks"].append([err(lse_t, lse), err(picked_t, picked), err(dq_t, dq), err(dd_t, dd)])
# the whole loss through the Triton blocks against dense autograd: several chunks, both masks
for ibn in (True, False):
    nq, nd, dim = 11, 29, 24
    rel_q = torch.cat([torch.arange(nq), torch.arange(nq), torch.tensor([2, 5])])
    rel_c = torch.cat([torch.arange(nq), torch.arange(nq) + nq, torch.tensor([25, 26])])
    rel_v = torch.cat([torch.ones(nq), -torch.ones(nq), torch.ones(2)]).to(torch.int8)
    targets = build_targets(rel_q, rel_c, rel_v, num_columns=nd, in_batch_negatives=ibn)
    q0, d0 = torch.randn(nq, dim, generator=g), torch.randn(nd, dim, generator=g)
    results = []
    for fn in (lambda q, d: info_nce(q, d, targets, 0.05, chunk_size=5, kernels="triton"),
               lambda q, d: info_nce_reference(q, d, targets, 0.05)):
        q, d = q0.clone().requires_grad_(), d0.clone().requires_grad_()
        loss = fn(F.normalize(q, dim=-1), F.normalize(d, dim=-1))
        loss.backward()
        results.append((loss.detach(), q.grad, d.grad))
    (a, qa, da), (b, qb, db) = results
    out["loss"].append([err(a, b), err(qa, qb), err(da, db)])
print("RESULT " + json.dumps(out))
"""


def test_triton_block_matches_the_reference_in_the_interpreter():
    stdout = run_in_triton_interpreter(CHECK)
    out = json.loads(next(x for x in stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert out["kernel"] == "triton"
    assert len(out["blocks"]) == 3 and len(out["loss"]) == 2
    for errors in out["blocks"] + out["loss"]:
        assert max(errors) < 1e-5, out
