"""Mamba-2 SSD (chunked scan), bf16, as Mamba2 layers call it: D (heads,), dt_bias, softplus, no z.

Shapes ``(batch, seqlen, heads, headdim, dstate, groups, chunk)``: the anchor B4 L4096 H80 P64
N128 G1 chunk 256, then L 1K and 16K, N 64 and 256, and G 8; forward and forward+backward.
scancc's ``mamba_chunk_scan_combined`` against mamba-ssm's (Triton, from ``.anchors``; it
autotunes for tens of seconds on its first call, so every case runs once before it is timed).
For the anchor shape scancc also runs with the state passing split into its own kernel
(``split``), the variant it picks by itself when batch × heads is small; ``--sweep`` times
more schedules (headdim tile, row tile, warps, stages) for that shape.

Bytes (the least any kernel must move, bf16): the forward reads ``x, B, C, dt`` and writes
``out``; the backward reads ``dout, x, B, C, dt`` and writes ``dx, dB, dC, ddt`` (the fp32
``A, D, dt_bias`` and their gradients are negligible). Outputs are checked against the float64
oracle (sequential, on the GPU) on batch row 0 and the heads of group 0.

Decode (mode ``decode``, shape ``(batch, heads, headdim, dstate)``, B64 H80 P64 N128 as in
``anchors.md``): one token of ``selective_state_update`` in the Mamba-2 layout as a Mamba2 layer
calls it (fp32 state, bf16 ``x, dt, B, C``, ``A``/``dt``/``dt_bias``/``D`` broadcast along the head
dim with stride 0, softplus), scancc against mamba-ssm's Triton kernel, each timed as a CUDA
graph replay. Bytes: the fp32 state read and written; % copy compares with a ``Tensor.copy_`` of
the state timed the same way. Checked against a float64 step on every row.

    PYTHONPATH=.anchors python benchmarks/bench_ssd.py --out results/
    python benchmarks/bench_ssd.py --smoke --out /tmp/bench   # CPU, interpreter
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

IMPLS = ("scancc", "mamba_ssm")
MODES = ("fwd", "fwd+bwd")
ANCHOR = (4, 4096, 80, 64, 128, 1, 256)
FULL_SHAPES = [ANCHOR, (4, 1024, 80, 64, 128, 1, 256), (4, 16384, 80, 64, 128, 1, 256),
               (4, 4096, 80, 64, 64, 1, 256), (4, 4096, 80, 64, 256, 1, 256), (4, 4096, 80, 64, 128, 8, 256)]
SMOKE_SHAPES = [(1, 64, 4, 16, 16, 1, 16)]
DECODE_SHAPES = [(64, 80, 64, 128)]
SMOKE_DECODE_SHAPES = [(2, 4, 8, 16)]
SWEEP = [  # schedules tried with --sweep on the anchor shape (chunk 256)
    {"block_d": 32}, {"block_d": 64, "num_warps": 8}, {"block_d": 32, "num_warps": 8},
    {"block_l": 128, "num_warps": 8}, {"num_stages": 1}, {"num_stages": 3},
]
# mamba-ssm's mamba_chunk_scan_combined and the floor on an H100, from /work/shared/anchors.md (2026-11-22).
ANCHORS = [
    (ANCHOR, "fwd", "mamba-ssm (anchors.md)", 0.747, ""),
    (ANCHOR, "fwd+bwd", "mamba-ssm (anchors.md)", 3.51, ""),
    (ANCHOR, "fwd", "floor (anchors.md)", 0.12, "349 MB at copy speed; ≈ 50–90 GFLOP"),
]


def shape_name(batch: int, seqlen: int, heads: int, headdim: int, dstate: int, groups: int, chunk: int) -> str:
    return f"B{batch} L{seqlen} H{heads} P{headdim} N{dstate} G{groups} Q{chunk}"


def min_bytes(batch: int, seqlen: int, heads: int, headdim: int, dstate: int, groups: int, chunk: int,
              mode: str) -> float:
    """Least bytes moved (bf16): see the module docstring."""
    x, bc, dt = batch * seqlen * heads * headdim, batch * seqlen * groups * dstate, batch * seqlen * heads
    fwd = 2.0 * (x + 2 * bc + dt + x)
    if mode == "fwd":
        return fwd
    return fwd + 2.0 * ((2 * x + 2 * bc + dt) + (x + 2 * bc + dt))


def load_impl(name: str, device: str) -> Callable[..., Any]:
    """A function with mamba-ssm's ``mamba_chunk_scan_combined`` signature."""
    return common.scancc_or_mamba_ssm(name, device, "mamba_chunk_scan_combined",
                                      "mamba_ssm.ops.triton.ssd_combined", "; needs einops")


def make_inputs(batch: int, seqlen: int, heads: int, headdim: int, dstate: int, groups: int,
                device: str) -> dict[str, Any]:
    """Random inputs as a Mamba2 layer at initialisation feeds them: A = −exp(A_log) in [−16, −1],
    softplus(dt + dt_bias) around [0.001, 0.1]."""
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    bf16 = torch.bfloat16

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, device=device, generator=gen)).to(bf16)

    lo, hi = math.log(1e-3), math.log(0.1)
    dt_init = torch.exp(lo + (hi - lo) * torch.rand(heads, device=device, generator=gen))
    return {
        "x": randn(batch, seqlen, heads, headdim),
        "dt": randn(batch, seqlen, heads, scale=0.5),
        "A": -(1.0 + 15.0 * torch.rand(heads, device=device, generator=gen)),
        "B": randn(batch, seqlen, groups, dstate),
        "C": randn(batch, seqlen, groups, dstate),
        "D": torch.randn(heads, device=device, generator=gen),
        "dt_bias": dt_init + torch.log(-torch.expm1(-dt_init)),  # softplus⁻¹
    }


def oracle_error(inputs: dict[str, Any], out: Any, groups: int) -> float:
    """rel-L2 of ``out`` on batch row 0 and group 0's heads against the float64 oracle (run on
    the inputs' device)."""
    import torch

    from scancc.ir import ssd
    from scancc.oracle import rel_l2, sequential

    heads = inputs["x"].shape[2] // groups
    sliced = {"x": inputs["x"][:1, :, :heads], "dt": inputs["dt"][:1, :, :heads], "A": inputs["A"][:heads],
              "B": inputs["B"][:1, :, :1], "C": inputs["C"][:1, :, :1], "D": inputs["D"][:heads],
              "dt_bias": inputs["dt_bias"][:heads]}
    with torch.no_grad():
        ref = sequential(ssd(gate=False), {k: v.detach().to(torch.float64) for k, v in sliced.items()})
    return rel_l2(out[:1, :, :heads], ref)


def decode_name(batch: int, heads: int, headdim: int, dstate: int) -> str:
    return f"decode B{batch} H{heads} P{headdim} N{dstate}"


def decode_state_bytes(batch: int, heads: int, headdim: int, dstate: int) -> float:
    """The fp32 state, read and written once."""
    return 2.0 * 4 * batch * heads * headdim * dstate


def load_decode_impl(name: str, device: str) -> Callable[..., Any]:
    """A function with mamba-ssm's ``selective_state_update`` signature."""
    return common.scancc_or_mamba_ssm(name, device, "selective_state_update",
                                      "mamba_ssm.ops.triton.selective_state_update")


def run_decode_case(case: dict[str, Any], device: str) -> dict[str, Any]:
    """One decode token (see the module docstring): time, rel-L2 and the copy comparison."""
    import torch

    from scancc.oracle import rel_l2

    batch, heads, headdim, dstate = case["shape"]
    fn = load_decode_impl(case["impl"], device)
    gen = torch.Generator(device=device).manual_seed(0)
    bf16 = torch.bfloat16

    def randn(*shape: int, scale: float = 1.0, dtype: torch.dtype = bf16) -> torch.Tensor:
        return (scale * torch.randn(*shape, device=device, generator=gen)).to(dtype)

    state = randn(batch, heads, headdim, dstate, scale=0.1, dtype=torch.float32)
    x = randn(batch, heads, headdim)
    dt = randn(batch, heads, scale=0.5)[:, :, None].expand(batch, heads, headdim)
    A = -(1.0 + 15.0 * torch.rand(heads, device=device, generator=gen))
    B, C = randn(batch, 1, dstate), randn(batch, 1, dstate)
    D = torch.randn(heads, device=device, generator=gen)
    dt_bias = torch.full((heads,), -3.0, device=device)
    args = {"x": x, "dt": dt, "A": A[:, None, None].expand(heads, headdim, dstate), "B": B, "C": C,
            "D": D[:, None].expand(heads, headdim), "dt_bias": dt_bias[:, None].expand(heads, headdim),
            "dt_softplus": True}

    work = state.clone()
    out = fn(work, **args)
    f64 = {k: v.double() for k, v in args.items() if isinstance(v, torch.Tensor)}
    delta = torch.nn.functional.softplus(f64["dt"] + f64["dt_bias"])[..., None]
    new_state = torch.exp(delta * f64["A"]) * state.double() + delta * f64["x"][..., None] * f64["B"][:, :, None]
    ref = (new_state * f64["C"][:, :, None]).sum(-1) + f64["D"] * f64["x"]
    err = max(rel_l2(out, ref), rel_l2(work, new_state))

    step_ms = common.graph_ms(lambda: fn(work, **args), device)
    eager_ms = common.bench_ms(lambda: fn(work, **args), device)
    dst = torch.empty_like(state)
    copy_ms = common.graph_ms(lambda: dst.copy_(state), device)
    fraction = copy_ms / step_ms
    return {"time_ms": step_ms, "err": err,
            "note": f"CUDA graph; {100 * fraction:.0f}% of a same-size copy_ ({copy_ms * 1e3:.1f} us); "
                    f"eager call {eager_ms * 1e3:.1f} us"}


def run_case(case: dict[str, Any], device: str) -> dict[str, Any]:
    import torch

    if case["mode"] == "decode":
        return run_decode_case(case, device)
    batch, seqlen, heads, headdim, dstate, groups, chunk = case["shape"]
    fn = load_impl(case["impl"], device)
    _apply_variant(case.get("variant") or {})
    inputs = make_inputs(batch, seqlen, heads, headdim, dstate, groups, device)
    names = ("x", "dt", "A", "B", "C")

    def forward() -> torch.Tensor:
        return fn(*(inputs[n] for n in names), chunk, D=inputs["D"], dt_bias=inputs["dt_bias"], dt_softplus=True)

    with torch.no_grad():
        out = forward()  # also mamba-ssm's autotuning, outside the timed region
        err = oracle_error(inputs, out, groups)
    if case["mode"] == "fwd":
        with torch.no_grad():
            ms = common.bench_ms(forward, device)
    else:
        leaves = [inputs[n].requires_grad_(True) for n in (*names, "D", "dt_bias")]
        grad_out = torch.randn_like(out)

        def step() -> Any:
            return torch.autograd.grad(forward(), leaves, grad_out)

        step()  # the backward's first call (autotuning, compilation)
        ms = common.bench_ms(step, device)
    return {"time_ms": ms, "err": err}


def _apply_variant(variant: dict[str, Any]) -> None:
    """``fused``: force the state passing into (True) or out of (False) chunk_scan;
    ``schedule``: Schedule fields replacing the op's default."""
    if not variant:
        return
    from scancc.backends import triton_ssd

    if variant.get("fused") is not None:
        triton_ssd.FUSED_MIN_PROGRAMS = 1 if variant["fused"] else 1 << 40
    changes = variant.get("schedule")
    if changes:
        import scancc.ops.ssd as op

        base = op.schedule_json

        def schedule_json(chunk_size: int) -> str:
            from scancc.ir import Schedule

            return Schedule.from_dict(json.loads(base(chunk_size))).replace(**changes).to_json()

        op.schedule_json = schedule_json


def _variant_label(variant: Optional[dict[str, Any]]) -> str:
    if not variant:
        return ""
    parts = []
    if variant.get("fused") is not None:
        parts.append("fused passing" if variant["fused"] else "split passing")
    parts += [f"{k}={v}" for k, v in (variant.get("schedule") or {}).items()]
    return ", ".join(parts)


def _fuses_by_default(shape: tuple[int, ...]) -> bool:
    from scancc.backends import triton_ssd
    from scancc.ir import ssd

    batch, _, heads, headdim, dstate, _, chunk = shape
    schedule = triton_ssd.default_schedule(ssd()).replace(chunk=chunk)
    return triton_ssd.fuses_passing(batch, heads, headdim, dstate, schedule)


def plan_cases(smoke: bool, sweep: bool) -> list[dict[str, Any]]:
    shapes = SMOKE_SHAPES if smoke else FULL_SHAPES
    cases = []
    for shape in shapes:
        for mode in MODES:
            for impl in IMPLS:
                cases.append({"impl": impl, "shape": shape, "mode": mode})
            if shape in (ANCHOR, SMOKE_SHAPES[0]):
                # the state passing the other way round from scancc's own choice for this shape
                cases.append({"impl": "scancc", "shape": shape, "mode": mode,
                              "variant": {"fused": not _fuses_by_default(shape)}})
                if sweep and not smoke:
                    cases += [{"impl": "scancc", "shape": shape, "mode": mode, "variant": {"schedule": s}}
                              for s in SWEEP]
    return cases + [{"impl": impl, "shape": shape, "mode": "decode"}
                    for shape in (SMOKE_DECODE_SHAPES if smoke else DECODE_SHAPES) for impl in IMPLS]


def plan(args: argparse.Namespace) -> dict[str, Any]:
    cases = plan_cases(args.smoke, args.sweep)

    def make_row(case: dict[str, Any]) -> common.Row:
        shape, mode = tuple(case["shape"]), case["mode"]
        if mode == "decode":
            return common.Row(bench="ssd", case=decode_name(*shape), impl=case["impl"], mode=mode, dtype="bfloat16",
                              bytes=decode_state_bytes(*shape), group=decode_name(*shape))
        label = _variant_label(case.get("variant"))
        # variants are rows of their own group, so peer/scancc always compares with the default scancc
        group = f"{shape_name(*shape)} {mode}" + (f" [{label}]" if label else "")
        return common.Row(bench="ssd", case=shape_name(*shape), impl=case["impl"], mode=mode, dtype="bfloat16",
                          bytes=min_bytes(*shape, mode), group=group,
                          note="; ".join(filter(None, [label, "rel-L2: forward output" if mode != "fwd" else ""])))

    refs = [] if args.smoke else [
        common.Row(bench="ssd", case=shape_name(*shape), impl=impl, mode=mode, dtype="bfloat16", status="reference",
                   time_ms=ms, bytes=min_bytes(*shape, mode), group=f"{shape_name(*shape)} {mode}",
                   note=note or "H100 2026-11-22, not this run")
        for shape, mode, impl, ms, note in ANCHORS
    ]
    return {"name": "ssd", "title": "Mamba-2 SSD chunked scan (bf16, D, dt_bias, softplus)", "cases": cases,
            "make_row": make_row, "reference_rows": refs}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", action="store_true",
                        help="also time scancc with other schedules on the anchor shape")


def main(argv: list[str] | None = None) -> int:
    return common.main_for(__file__, __doc__.splitlines()[0], run_case, plan, argv, add_arguments)


if __name__ == "__main__":
    sys.exit(main())
