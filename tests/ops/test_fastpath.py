"""The eager fast path: checks memoised per argument signature, the dispatcher skipped when it adds nothing.

A memo that outlives a call must never carry that call's *tensors* into the next one, nor let
an argument that fails a check through because an earlier call of similar arguments passed.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from ops_reference import DEVICE, assert_close
from torch.utils._python_dispatch import TorchDispatchMode

import scancc.autotune as autotune
from scancc.fastpath import Memo, plain_eager, signature
from scancc.ops import mamba_chunk_scan_combined, selective_scan_fn, selective_state_update
from scancc.ops import registry

selective_module = importlib.import_module("scancc.ops.selective")
decode_module = importlib.import_module("scancc.ops.decode")
ssd_module = importlib.import_module("scancc.ops.ssd")


def selective_inputs(seed: int, batch: int = 1, dim: int = 4, dstate: int = 3, seqlen: int = 7) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u, z = (torch.randn(batch, dim, seqlen, generator=g) for _ in range(2))
    delta = torch.rand(batch, dim, seqlen, generator=g) * 0.5
    A = -torch.rand(dim, dstate, generator=g) - 0.1
    B, C = (torch.randn(batch, dstate, seqlen, generator=g) for _ in range(2))
    D = torch.randn(dim, generator=g)
    return [t.to(DEVICE) for t in (u, delta, A, B, C, D, z)]


def count_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    calls = [0]
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("backend", ["triton", None])  # None: the device's default (TVM on CPU when installed)
def test_a_repeated_signature_is_checked_once_and_computes_with_its_own_tensors(
        monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    selective_module._CHECKED.clear()
    checks = count_calls(monkeypatch, selective_module, "_check")
    first, second = selective_inputs(1), selective_inputs(2)
    with torch.no_grad():
        out1 = selective_scan_fn(*first, delta_softplus=True, backend=backend)
        out2 = selective_scan_fn(*second, delta_softplus=True, backend=backend)
        assert checks[0] == 1
        selective_module._CHECKED.clear()
        autotune.clear_memo()
        fresh = selective_scan_fn(*second, delta_softplus=True, backend=backend)
    assert checks[0] == 2
    assert_close("memoised call", out2, fresh, 1e-6)
    assert (out1 - out2).abs().max() > 0.1  # the second call did not reuse the first call's inputs


def test_a_new_signature_is_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    selective_module._CHECKED.clear()
    checks = count_calls(monkeypatch, selective_module, "_check")
    u, delta, A, B, C, D, z = selective_inputs(3)
    with torch.no_grad():
        selective_scan_fn(u, delta, A, B, C, D, z, delta_softplus=True)
        selective_scan_fn(u, delta, A, B, C, D, z, delta_softplus=False)
        selective_scan_fn(u[..., 1:], delta[..., 1:], A, B[..., 1:], C[..., 1:], D, z[..., 1:], delta_softplus=True)
    assert checks[0] == 3


def test_bad_arguments_after_good_ones_still_raise() -> None:
    u, delta, A, B, C, D, z = selective_inputs(4)
    with torch.no_grad():
        selective_scan_fn(u, delta, A, B, C, D, z, delta_softplus=True)
        with pytest.raises(TypeError, match="delta_softplus: expected a bool"):
            selective_scan_fn(u, delta, A, B, C, D, z, delta_softplus=1)  # 1 == True, but not a bool
        with pytest.raises(TypeError, match="D"):
            selective_scan_fn(u, delta, A, B, C, D.double(), z, delta_softplus=True)
        with pytest.raises(ValueError, match="z"):
            selective_scan_fn(u, delta, A, B, C, D, z[..., :-1], delta_softplus=True)
        # same shapes, other strides: a new signature, and still the right answer
        strided = z.transpose(1, 2).contiguous().transpose(1, 2)
        assert strided.stride() != z.stride()
        assert_close("strided z", selective_scan_fn(u, delta, A, B, C, D, strided, delta_softplus=True),
                     selective_scan_fn(u, delta, A, B, C, D, z, delta_softplus=True), 1e-6)


def test_decode_memo_covers_both_layouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Mamba-2 layout's check result is ``None``: it must be memoised too, and results
    must follow each call's own state."""
    decode_module._CHECKED.clear()
    checks = count_calls(monkeypatch, decode_module, "_check")
    g = torch.Generator().manual_seed(5)
    batch, heads, dim, dstate = 2, 2, 4, 3
    x = torch.randn(batch, heads, dim, generator=g).to(DEVICE)
    dt = torch.rand(batch, heads, dim, generator=g).to(DEVICE)
    A = (-torch.rand(heads, dim, dstate, generator=g)).to(DEVICE)
    B, C = (torch.randn(batch, 1, dstate, generator=g).to(DEVICE) for _ in range(2))
    states = [torch.randn(batch, heads, dim, dstate, generator=g).to(DEVICE) for _ in range(2)]
    expected = []
    for s in states:
        s = s.clone()
        dA = torch.exp(dt[..., None] * A)
        s = dA * s + (dt * x)[..., None] * B[:, :, None, :].expand(batch, heads, 1, dstate)
        expected.append((s * C[:, :, None, :]).sum(-1))
    with torch.no_grad():
        outs = [selective_state_update(s, x, dt, A, B, C) for s in states]
    assert checks[0] == 1
    for out, ref in zip(outs, expected):
        assert_close("decode", out, ref, 1e-5)


def test_ssd_memo_and_unhashable_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    ssd_module._CHECKED.clear()
    checks = count_calls(monkeypatch, ssd_module, "_check")
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 20, 2, 4, generator=g).to(DEVICE)
    dt = torch.rand(1, 20, 2, generator=g).to(DEVICE)
    A = (-torch.rand(2, generator=g) - 0.1).to(DEVICE)
    B, C = (torch.randn(1, 20, 1, 8, generator=g).to(DEVICE) for _ in range(2))
    with torch.no_grad():
        a = mamba_chunk_scan_combined(x, dt, A, B, C, 16)
        b = mamba_chunk_scan_combined(x, dt, A, B, C, 16)
        c = mamba_chunk_scan_combined(x, dt, A, B, C, 16, dt_limit=[0.0, math.inf])  # a list: no memo, still checked
        with pytest.raises(TypeError, match="chunk_size"):
            mamba_chunk_scan_combined(x, dt, A, B, C, 16.0)
    assert checks[0] == 3  # a, c (unhashable: checked each call), 16.0 (raises); b was memoised
    assert_close("memoised ssd", b, a, 0.0)
    assert_close("unmemoised ssd", c, a, 0.0)


def test_kernels_are_forgotten_with_the_autotuner_memo() -> None:
    with torch.no_grad():
        selective_scan_fn(*selective_inputs(7))
    assert len(registry._KERNELS) > 0
    autotune.clear_memo()
    assert len(registry._KERNELS) == 0


def test_plain_eager_conditions() -> None:
    t = torch.randn(3)
    w = torch.randn(3, requires_grad=True)
    assert plain_eager([t, None])
    assert not plain_eager([t, w])  # a gradient to record: autograd must see the op
    with torch.no_grad():
        assert plain_eager([t, w])
    with TorchDispatchMode():
        assert not plain_eager([t])

    class Sub(torch.Tensor):
        pass

    assert not plain_eager([t.as_subclass(Sub)])


def test_gradients_flow_when_inputs_require_them() -> None:
    """The fast path is for calls without gradients: with them the op goes through autograd."""
    u, delta, A, B, C, D, z = selective_inputs(8)
    u.requires_grad_(True)
    selective_scan_fn(u, delta, A, B, C, D, z).sum().backward()
    assert u.grad is not None and torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0


def test_memo_is_bounded_and_tolerates_unhashable_keys() -> None:
    memo: Memo[int] = Memo(entries=2)
    made = []

    def make(v: int):
        return lambda: made.append(v) or v

    assert memo.get_or_make(("a",), make(1)) == 1
    assert memo.get_or_make(("a",), make(9)) == 1
    memo.get_or_make(("b",), make(2))
    memo.get_or_make(("c",), make(3))
    assert len(memo) <= 2 and made == [1, 2, 3]
    assert memo.get_or_make((["unhashable"],), make(4)) == 4 and len(memo) <= 2
    assert signature([torch.zeros(2, 3)[:, 1:], True]) != signature([torch.zeros(2, 2), True])
    assert signature([1]) != signature([True])


@pytest.mark.parametrize("backend", ["triton", None])
@pytest.mark.parametrize("packed", [False, True])
def test_eager_gradients_equal_the_dispatched_ops_without_a_second_forward(
        monkeypatch: pytest.MonkeyPatch, backend: str, packed: bool) -> None:
    """With a gradient to record, eager calls keep the forward's checkpoints for the backward
    (one forward launch per step, not two) and get the gradients the custom ops give."""
    u, delta, A, B, C, D, z = selective_inputs(9, seqlen=23)
    cu = torch.tensor([0, 9, 23], device=DEVICE, dtype=torch.int32) if packed else None
    h0 = torch.randn(2 if packed else 1, 4, 3, generator=torch.Generator().manual_seed(10)).to(DEVICE)
    leaves = [t.clone().requires_grad_(True) for t in (u, delta, A, B, C, D, z, h0)]

    def loss(ts: list[torch.Tensor]) -> torch.Tensor:
        *args, state = ts
        out, last = selective_scan_fn(*args, delta_softplus=True, return_last_state=True, initial_state=state,
                                      cu_seqlens=cu, backend=backend)
        return (out * out).sum() + (last * last).sum()

    from scancc.backends.triton import TritonScan

    forwards = count_calls(monkeypatch, TritonScan, "forward")
    eager = torch.autograd.grad(loss(leaves), leaves)
    if backend == "triton":
        assert forwards[0] == 1
    monkeypatch.setattr(registry, "eager_mode", lambda tensors: None)  # through scancc::scan and its backward op
    dispatched = torch.autograd.grad(loss(leaves), leaves)
    if backend == "triton":
        assert forwards[0] == 3
    for name, a, b in zip(("u", "delta", "A", "B", "C", "D", "z", "h0"), eager, dispatched):
        assert_close(f"d{name}", a, b, 1e-5)


@pytest.mark.parametrize("backend", ["triton", None])
def test_memos_do_not_keep_a_calls_tensors_alive(backend: str) -> None:
    import gc
    import weakref

    selective_module._CHECKED.clear()
    autotune.clear_memo()
    u, delta, A, B, C, D, z = selective_inputs(11, seqlen=5)
    with torch.no_grad():
        out = selective_scan_fn(u, delta, A, B, C, D, z, backend=backend)
    refs = [weakref.ref(t) for t in (u, delta, A, B, C, D, z, out)]
    del u, delta, A, B, C, D, z, out
    gc.collect()
    assert all(ref() is None for ref in refs)
