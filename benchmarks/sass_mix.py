"""Instruction mix per state element of a diagonal-family Triton kernel, without a GPU.

Compiles the generated forward (or, ``--kernel bwd``, backward) kernel of a preset (default: the Mamba-1 selective scan, bf16
activations, every flag on) for sm_90 with Triton's own compiler, disassembles the cubin with
the ``cuobjdump`` Triton ships, and divides each opcode's count by the state elements one
thread updates per tile (``BLOCK_D·BLOCK_N·BLOCK_L / threads``) and by the copies of the tile
body in the code (two for ``unrolled_scan``: full tiles and the masked last one). The tile
body is straight-line code over ``BLOCK_L`` steps, so the counts are dominated by it;
prologue and epilogue add a little. Tiles default to what a launch at B4 D5120 would use
with the algorithm's default schedule (``--algorithm``, default: the backend's). What it is for: a kernel bound by its special-function unit wants about one ``MUFU``
and a few FP32 instructions per element, and every ``SHFL`` (warp shuffle: a reduction or a
layout change across lanes) in the inner loop costs issue slots of the same shared pipe.

    python benchmarks/sass_mix.py                                 # the selective scan's default schedule
    python benchmarks/sass_mix.py --algorithm sequential --block-d 32 --block-l 16 --num-warps 2
    python benchmarks/sass_mix.py --kernel bwd --block-d 8 --block-l 64 --num-warps 1   # the backward's tiles
    python benchmarks/sass_mix.py --set complex=true --algorithm unrolled_scan          # complex A

The compile time printed is Triton's, to sm_90, on this machine; set TRITON_CACHE_DIR to an
empty directory for a cold compile (a cached kernel compiles in a fraction of a second).

Static counts are a proxy, not a timing: latency, occupancy and memory are not in them.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY_OPCODES = ("MUFU", "SHFL", "LDG", "STG", "LDL", "STL")  # always listed when present
HALF_ACTIVATIONS = {"u", "x", "a", "delta", "B", "C", "z", "out", "dout", "du", "dx", "da", "ddelta", "dz"}
PER_CHANNEL = {"A", "A_bar", "B_bar", "D", "delta_bias", "h0", "ht", "ckpt", "dht", "dh0", "dA", "dA_bar", "dB",
               "dB_bar", "dC", "dD", "ddelta_bias"}


def compile_cubin(preset: str, algorithm: str, kernel: str, block_d: int, block_l: int, dstate: int,
                  num_warps: int, ckpt_every: int = 1, settings: tuple[str, ...] = ()) -> bytes:
    """The ``kernel`` (``"fwd"``, ``"bwd"`` or ``"bwd_unrolled"``) of ``preset`` (with ``--set``
    style ``settings``) under ``algorithm``, compiled for sm_90 at these tiles (no GPU needed)."""
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from scancc.backends.modules import load_source
    from scancc.backends.triton import TritonBackend
    from scancc.cli import load_program

    program = load_program(preset, settings)
    backend = TritonBackend()
    source = backend.lower(program, backend.default_schedule(program).replace(algorithm=algorithm))
    fn = getattr(load_source(source, "triton", program.name), f"{program.name}_{kernel}_kernel")
    constexprs = {"dstate": dstate, "BLOCK_D": block_d, "BLOCK_N": dstate, "BLOCK_L": block_l, "CKPT_EVERY": ckpt_every,
                  "HAS_H0": False, "STORE_HT": False, "SAVE_CKPT": False, "VARLEN": False, "HAS_DHT": False,
                  "STORE_DH0": False, "ATOMIC_BC": False}
    constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
    constexprs.update({n: True for n in fn.arg_names if n.startswith("HAS_") and n not in constexprs})
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in HALF_ACTIVATIONS:
            signature[name] = "*bf16"
        elif name in PER_CHANNEL:
            signature[name] = "*fp32"
        elif name == "cu_seqlens":
            signature[name] = "*i32"
        else:
            signature[name] = "i32"
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    return compiled.asm["cubin"]


def opcode_counts(cubin: bytes) -> collections.Counter:
    """SASS opcodes (without modifiers) of a cubin, via the cuobjdump bundled with Triton."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([str(tool), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    pattern = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")
    return collections.Counter(m.group(1) for m in map(pattern.match, sass.splitlines()) if m)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="selective")
    p.add_argument("--algorithm", choices=("unrolled_scan", "sequential", "chunked_scan"), default=None)
    p.add_argument("--kernel", choices=("fwd", "bwd"), default="fwd")
    p.add_argument("--block-d", type=int, default=None)
    p.add_argument("--block-l", type=int, default=None)
    p.add_argument("--dstate", type=int, default=16)
    p.add_argument("--num-warps", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a preset keyword argument, e.g. --set complex=true (repeatable)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from scancc.backends.diagonal import DiagonalPlan
    from scancc.backends.triton import TritonBackend, tile_sizes
    from scancc.cli import load_program

    program = load_program(args.preset, args.set)
    schedule = TritonBackend().default_schedule(program)
    if args.algorithm is not None and args.algorithm != schedule.algorithm:
        schedule = schedule.replace(algorithm=args.algorithm, block_n=None)
    tiles = tile_sizes(DiagonalPlan.of(program), schedule, 5120, args.dstate, 5120, 4)
    fwd = args.kernel == "fwd"
    unrolled_bwd = not fwd and tiles.bwd_unrolled
    block_d = args.block_d or (tiles.block_d if fwd else tiles.bwd_block_d)
    # the unrolled backward's tile is BLOCK_L·CKPT_EVERY steps: --block-l sets that whole tile
    block_l = args.block_l or (tiles.block_l if fwd or unrolled_bwd else tiles.bwd_block_l)
    ckpt_every = tiles.ckpt_every if unrolled_bwd and not args.block_l else 1
    num_warps = args.num_warps or (schedule.num_warps if fwd else tiles.bwd_num_warps)
    kernel = "bwd_unrolled" if unrolled_bwd else args.kernel
    started = time.perf_counter()
    cubin = compile_cubin(args.preset, schedule.algorithm, kernel, block_d, block_l, args.dstate, num_warps,
                          ckpt_every, tuple(args.set))
    compile_s = time.perf_counter() - started
    counts = opcode_counts(cubin)
    bodies = 2 if fwd and tiles.unrolled else 1
    steps = block_l * ckpt_every
    elements = bodies * block_d * args.dstate * steps / (32 * num_warps)
    total = sum(counts.values())
    form = schedule.algorithm if fwd or unrolled_bwd else "chunked scan"
    print(f"{args.preset} {args.kernel} ({form}), sm_90, BLOCK_D {block_d} BLOCK_N {args.dstate} tile of {steps} "
          f"steps, {num_warps} warps: {elements / bodies:g} state elements per thread per tile"
          f"{', two tile bodies' if bodies == 2 else ''}; compiled in {compile_s:.1f} s")
    print(f"  all instructions  {total:6d}  {total / elements:6.2f} per element")
    shown = [op for op, _ in counts.most_common(12)]
    shown += [op for op in KEY_OPCODES if op in counts and op not in shown]
    for op in shown:
        print(f"  {op:<17} {counts[op]:6d}  {counts[op] / elements:6.2f} per element")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
