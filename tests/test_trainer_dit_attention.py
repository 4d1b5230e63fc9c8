"""Cross-attention to padded captions without a boolean mask, and RoPE tables in the compute dtype
(trainer/dit.py): the mask-free form gives what masked SDPA gives (outputs and gradients), a
padded batch gives each row what that row gives alone and unpadded, CUDA half precision takes the
mask-free form (SDPA with no attn_mask, one head size for q, k and v: what flash attention
needs), and RoPE is unchanged in float32 and within bf16 rounding in bf16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode

import trainer.dit as dit
from trainer.dit import (
    DiT,
    DiTBlock,
    DiTConfig,
    apply_rope,
    axis_angles,
    key_padded_attention,
    rope_3d,
    rope_tables,
    text_attention,
)

TEXT_DIM = 24


def masked_sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])


def qkv(n: int, heads: int, lq: int, lk: int, hd: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, heads, rows, hd, generator=g) * 2).to(dtype).requires_grad_() for rows in (lq, lk, lk)]


# rows: full; a prefix; scattered tokens (not a prefix); one token; none at all
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1],
                     [0, 0, 0, 0, 0, 0]], dtype=torch.bool)


class SdpaCalls(TorchFunctionMode):
    """Records every SDPA call: the q, k, v shapes and dtype, and its keyword arguments."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[tuple, torch.dtype, dict]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            attn_mask = kwargs.get("attn_mask") if kwargs else (args[3] if len(args) > 3 else None)
            self.calls.append((tuple(tuple(a.shape) for a in args[:3]), args[0].dtype,
                               {**(kwargs or {}), "attn_mask": attn_mask}))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("hd", [12, 16, 64])
def test_key_padded_attention_gives_masked_sdpa_outputs_and_gradients(hd: int):
    results = []
    for fn in (masked_sdpa, key_padded_attention):
        q, k, v = qkv(len(MASK), 3, 10, MASK.shape[1], hd)
        out = fn(q, k, v, MASK)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
        results.append([out.detach(), q.grad, k.grad, v.grad])
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()
    out, _, k_grad, v_grad = results[1]
    assert torch.count_nonzero(out[-1]) == 0                       # no real key: 0, as masked SDPA
    pad = ~MASK[:, None, :, None].expand_as(k_grad)
    assert torch.count_nonzero(k_grad[pad]) == 0 and torch.count_nonzero(v_grad[pad]) == 0
    assert torch.count_nonzero(k_grad[~pad]) > 0.9 * (~pad).sum()


def test_key_padded_attention_in_bf16_is_within_bf16_rounding_of_float32():
    q, k, v = qkv(len(MASK), 2, 12, MASK.shape[1], 64)
    exact = masked_sdpa(q.double(), k.double(), v.double(), MASK)
    ours = key_padded_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), MASK).double()
    masked = masked_sdpa(q.bfloat16(), k.bfloat16(), v.bfloat16(), MASK).double()
    # both bf16 forms err by about the same (bf16 inputs and output), not by the padding
    assert (ours - exact).abs().max() < 2 * (masked - exact).abs().max() + 1e-2
    assert (ours - exact).abs().max() < 0.05 * exact.abs().max()


def test_padding_keys_with_huge_values_get_no_weight():
    q, k, v = qkv(len(MASK), 2, 8, MASK.shape[1], 16)
    with torch.no_grad():
        k2, v2 = k.clone(), v.clone()
        k2[~MASK[:, None, :, None].expand_as(k2)] = 1e4            # would dominate any softmax they entered
        v2[~MASK[:, None, :, None].expand_as(v2)] = 1e6
        assert torch.allclose(key_padded_attention(q, k2, v2, MASK), masked_sdpa(q, k, v, MASK), atol=1e-5)


def test_cuda_half_precision_takes_the_mask_free_form_and_cpu_keeps_the_mask():
    """Fake CUDA tensors (no GPU here): the SDPA call the model makes there has no attn_mask and
    q, k, v of one head size, a multiple of 8, as flash attention takes them."""
    with FakeTensorMode():
        q = torch.empty(2, 4, 16, 48, device="cuda", dtype=torch.bfloat16)
        k = torch.empty(2, 4, 7, 48, device="cuda", dtype=torch.bfloat16)
        mask = torch.ones(2, 7, dtype=torch.bool, device="cuda")
        with SdpaCalls() as spy:
            out = text_attention(q, k, k, mask)
            text_attention(q.float(), k.float(), k.float(), mask)   # fp32: no flash on CUDA, the mask stays
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    (shapes, dtype, kwargs), (_, _, kwargs32) = spy.calls
    assert kwargs["attn_mask"] is None and dtype == torch.bfloat16
    assert len({s[-1] for s in shapes}) == 1 and shapes[0][-1] % 8 == 0 and kwargs["scale"] == 48 ** -0.5
    assert kwargs32["attn_mask"] is not None
    q, k, v = qkv(2, 2, 4, 3, 8)
    with SdpaCalls() as spy:
        text_attention(q, k, v, torch.ones(2, 3, dtype=torch.bool))
        text_attention(q, k, v, None)
    assert spy.calls[0][2]["attn_mask"] is not None and spy.calls[1][2]["attn_mask"] is None


def tiny_dit(attention: str) -> DiT:
    torch.manual_seed(0)
    model = DiT(DiTConfig(size="tiny", depth=2, hidden_size=48, num_heads=4, attention=attention),
                in_channels=4, text_dim=TEXT_DIM)
    for p in model.parameters():            # away from the zero init, so the text matters
        torch.nn.init.normal_(p, std=0.1)
    return model


@pytest.mark.parametrize("attention", ["full", "factorized"])
@pytest.mark.parametrize("form", ["masked", "mask_free"])
def test_each_row_of_a_padded_batch_gives_what_it_gives_alone_unpadded(attention: str, form: str, monkeypatch):
    if form == "mask_free":     # what CUDA runs, here on the CPU
        monkeypatch.setattr(dit, "text_attention",
                            lambda q, k, v, m: key_padded_attention(q, k, v, m) if m is not None
                            else F.scaled_dot_product_attention(q, k, v))
    model = tiny_dit(attention)
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(3, 4, 3, 4, 4, generator=g), torch.rand(3, 3, generator=g)
    lengths = [6, 2, 4]
    context = torch.randn(3, 6, TEXT_DIM, generator=g)
    mask = torch.arange(6)[None] < torch.tensor(lengths)[:, None]
    context[~mask] = 100.0                  # padding that would change everything if it were seen
    batch = model(x, t, context, mask)
    for i, n in enumerate(lengths):
        alone = model(x[i:i + 1], t[i:i + 1], context[i:i + 1, :n], None)
        assert torch.allclose(batch[i:i + 1], alone, atol=1e-5), (batch[i:i + 1] - alone).abs().max()
    assert not torch.allclose(batch[0], batch[1])


def test_the_mask_free_block_compiles_without_graph_breaks():
    block = DiTBlock(32, 4, 2.0, qk_norm=True, factorized=False)
    x, mod, context = torch.randn(2, 2, 4, 32), torch.randn(2, 2, 1, 6, 32), torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    rope = rope_tables(*rope_3d((2, 2, 2), 8, 10000.0), 2, False, torch.float32)
    compiled = torch.compile(block, backend="eager", fullgraph=True)
    q, k, v = qkv(2, 4, 8, 5, 8)
    assert torch.allclose(torch.compile(key_padded_attention, backend="eager", fullgraph=True)(q, k, v, mask),
                          masked_sdpa(q, k, v, mask), atol=1e-5)
    assert torch.allclose(compiled(x, mod, context, mask, rope), block(x, mod, context, mask, rope), atol=1e-6)


def test_compiled_blocks_compile_once_for_every_caption_length():
    """Captions differ in length from batch to batch; the blocks see L as a dynamic size from their
    first call, so a second length does not compile them again (it cost ~half a compile: 30 s of an
    H100 smoke run)."""
    graphs = []

    def counting(gm: torch.fx.GraphModule, inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model = DiT(DiTConfig(size="tiny", depth=2), in_channels=4, text_dim=TEXT_DIM).eval()
    for block in model.blocks:
        block.compile(backend=counting)
    x, t = torch.randn(2, 4, 3, 8, 8), torch.rand(2, 3)
    for length in (5, 9, 13):
        context, mask = torch.randn(2, length, TEXT_DIM), torch.ones(2, length, dtype=torch.bool)
        mask[1, length - 2:] = False
        with torch.no_grad():
            out = model(x, t, context, mask)
        assert torch.isfinite(out).all()
    assert len(graphs) == 1


def float32_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as it was: x to float32 and back in every layer."""
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).to(x.dtype)


def test_rope_tables_rotate_as_before_in_float32_and_within_rounding_in_bf16():
    grid, hd = (3, 4, 5), 16
    cos, sin = rope_3d(grid, hd, 10000.0)
    x = torch.randn(2, 4, 60, hd, generator=torch.Generator().manual_seed(0)) * 4
    c, s = (a[:, None] for a in rope_tables(cos, sin, 1, False, torch.float32))
    assert torch.equal(apply_rope(x, c, s), float32_rope(x, c, s))
    # factorized tables: what each block used to repeat for itself
    b = 2
    spatial_cos, spatial_sin, temporal_cos, temporal_sin = rope_tables(cos, sin, b, True, torch.float32)
    assert torch.equal(spatial_cos, cos.repeat(b, 1, 1)) and torch.equal(spatial_sin, sin.repeat(b, 1, 1))
    assert torch.equal(temporal_cos, cos.transpose(0, 1).repeat(b, 1, 1))
    assert torch.equal(temporal_sin, sin.transpose(0, 1).repeat(b, 1, 1))
    # bf16: tables in bf16, the rotation in bf16; against the exact rotation of the same input
    xb = x.bfloat16()
    c16, s16 = (a[:, None] for a in rope_tables(cos, sin, 1, False, torch.bfloat16))
    assert apply_rope(xb, c16, s16).dtype == torch.bfloat16
    angles = axis_angles(grid, hd, 10000.0).reshape(1, 1, -1, hd // 2)
    x1, x2 = xb.double()[..., 0::2], xb.double()[..., 1::2]
    exact = torch.stack([x1 * angles.cos() - x2 * angles.sin(), x1 * angles.sin() + x2 * angles.cos()], -1).flatten(-2)
    err_new = (apply_rope(xb, c16, s16).double() - exact).abs()
    err_old = (float32_rope(xb, c, s).double() - exact).abs()
    spacing = 2.0 ** (torch.floor(torch.log2(xb.double().abs().amax(-1, keepdim=True))) - 7)   # bf16 ulp of the row
    assert (err_new <= 2 * spacing).all() and (err_old <= spacing).all()
    # and with float32 tables a bf16 x is rotated in float32, exactly as before
    assert torch.equal(apply_rope(xb, c, s), float32_rope(xb, c, s))


def test_the_model_makes_bf16_tables_under_autocast(monkeypatch):
    seen = []
    monkeypatch.setattr(dit, "apply_rope", lambda x, c, s: seen.append((x.dtype, c.dtype)) or apply_rope(x, c, s))
    model = tiny_dit("factorized")
    args = (torch.randn(1, 4, 3, 4, 4), torch.rand(1, 3), torch.randn(1, 3, TEXT_DIM), None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(*args).float()
    assert set(seen) == {(torch.bfloat16, torch.bfloat16)}
    seen.clear()
    full = model(*args)
    assert set(seen) == {(torch.float32, torch.float32)}
    assert (low - full).abs().max() < 0.05 * full.abs().max()


def sdpa_kernels_run(first: str) -> set[str]:
    """The aten SDPA kernels one self-attention runs under `attention_kernels(first)`."""
    from torch.profiler import ProfilerActivity, profile

    from trainer.runtime import attention_kernels

    q = torch.randn(1, 2, 16, 8)
    with profile(activities=[ProfilerActivity.CPU]) as prof, attention_kernels(first):
        F.scaled_dot_product_attention(q, q, q)
    return {e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product")}


def test_attention_kernel_puts_its_backend_first():
    """train.attention_kernel reorders SDPA's backends (the order CUDA picks by; torch keeps it in
    `_get_sdp_priority_order`), leaves every backend allowed behind the first, so a backend the
    inputs cannot take (cuDNN on a CPU) falls back instead of failing, and restores the order after."""
    from torch.nn.attention import SDPBackend

    from trainer.runtime import attention_kernels

    def order() -> list[SDPBackend]:
        names = {int(b): b for b in SDPBackend.__members__.values()}
        return [names[i] for i in torch._C._get_sdp_priority_order()]

    default = order()
    assert default.index(SDPBackend.CUDNN_ATTENTION) > default.index(SDPBackend.FLASH_ATTENTION)   # torch's own
    for name, first in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)):
        with attention_kernels(name):
            assert order()[0] == first
            assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    with attention_kernels("auto"):
        assert order() == default
    assert order() == default
    assert sdpa_kernels_run("auto") == sdpa_kernels_run("cudnn") == {"aten::_scaled_dot_product_flash_attention_for_cpu"}


def test_attention_kernel_setting_is_checked():
    from typing import get_args, get_type_hints

    from trainer.runtime import ATTENTION_KERNELS
    from trainer.train import LoopConfig, load_job_config
    from trainer.typedconfig import ConfigError

    # the config's choices are the backends the trainer knows, and "auto"
    assert set(get_args(get_type_hints(LoopConfig)["attention_kernel"])) == {"auto", *ATTENTION_KERNELS}
    cfg = load_job_config("dit", "configs/dit_tiny.yaml", ["train.attention_kernel=cudnn"])
    assert cfg.train.attention_kernel == "cudnn"
    with pytest.raises(ConfigError, match="attention_kernel"):
        load_job_config("dit", "configs/dit_tiny.yaml", ["train.attention_kernel=fastest"])
