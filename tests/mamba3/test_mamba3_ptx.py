"""The Mamba-3 decode and rotary kernels compile for an H100 (sm_90 PTX) without a GPU: what the
interpreter accepts but the compiler refuses (non-constexpr globals, fp64 math, layouts) fails
here instead of on the GPU machine. Runs in a subprocess without TRITON_INTERPRET."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r'''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from scancc import ir
from scancc.backends.modules import load_source
from scancc.backends.templating import render
from scancc.backends.triton_mamba3_step import template_context

FLAGS = ("R", "HAS_W", "HAS_BIAS", "HAS_D", "HAS_Z", "HAS_PHI0", "BLOCK_P", "BLOCK_N", "BLOCK_L")
HALF = {"k", "q", "x", "z", "out", "angles", "k_out", "q_out", "dk_rot", "dq_rot"}
FLOAT = {"ssm", "k_state", "x_state", "angle", "angle_out", "dt", "adt", "trap", "k_bias", "q_bias", "D", "W_x",
         "W_z", "W_o", "phi0", "phi_last", "dphi_last", "du_k", "du_q", "dkb_part", "dqb_part", "dangles", "ddt",
         "dphi0"}


def compile_ptx(fn, constexprs, warps):
    kinds = [("constexpr", FLAGS), ("*fp64", {"carries"}), ("*bf16", HALF), ("*fp32", FLOAT)]
    sig = {n: next((kind for kind, names in kinds if n in names), "i32") for n in fn.arg_names}
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": warps})
    print("compiled", fn.__name__)


for rank, pairing in ((1, "interleaved"), (4, "halves")):
    p = ir.mamba3(rank=rank, pairing=pairing).as_step()
    mod = load_source(render("triton/mamba3_step.py.j2", **template_context(p)), "triton", p.name)
    compile_ptx(getattr(mod, f"{p.name}_kernel"), dict(R=rank, HAS_W=rank > 1, HAS_BIAS=True, HAS_D=True,
                HAS_Z=True, BLOCK_P=64, BLOCK_N=128), 8)
for pairing in ("interleaved", "halves"):
    name = f"mamba3_rotary_{pairing}"
    mod = load_source(render("triton/mamba3_rotary.py.j2", name=name, pairing=pairing), "triton", name)
    for kernel in ("kernel", "bwd_kernel"):
        compile_ptx(getattr(mod, f"{name}_{kernel}"), dict(HAS_BIAS=True, HAS_PHI0=True, BLOCK_L=16, BLOCK_N=128), 8)
'''


def test_kernels_compile_for_sm90() -> None:
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(repo), env.get("PYTHONPATH"))))
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, env=env,
                         cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]
    assert res.stdout.count("compiled") == 6, res.stdout
