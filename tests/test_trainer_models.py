"""Model shapes for every kind of bucket, both attention modes, with and without condition masks;
the causal VAE; the rectified-flow objective and sampler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.dit import DiT, DiTConfig, rope_3d, sincos_3d
from trainer.rf import (
    FlowConfig,
    flow_loss,
    resolution_shift,
    sample,
    sample_condition_masks,
    sample_timesteps,
    shift_time,
)
from trainer.typedconfig import ConfigError
from trainer.vae import CausalVAE, VAEConfig

TEXT_DIM = 24
# latent (T, H, W): one frame (image), odd frame counts, non-square both ways
LATENT_SHAPES = [(1, 4, 4), (3, 4, 6), (5, 6, 4), (2, 2, 8)]


def tiny_dit(attention: str) -> DiT:
    torch.manual_seed(0)
    return DiT(DiTConfig(size="tiny", depth=2, hidden_size=48, num_heads=4, attention=attention),
               in_channels=4, text_dim=TEXT_DIM)


@pytest.mark.parametrize("attention", ["full", "factorized"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_dit_forward_backward_every_bucket(attention: str, with_mask: bool):
    model = tiny_dit(attention)
    for frames, height, width in LATENT_SHAPES:
        x = torch.randn(2, 4, frames, height, width)
        context = torch.randn(2, 5, TEXT_DIM)
        context_mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
        cond = None
        if with_mask:
            cond = torch.zeros(2, frames)
            cond[0, 0] = 1.0
        out = model(x, torch.rand(2, frames), context, context_mask, cond)
        assert out.shape == x.shape
        out.square().mean().backward()
        assert torch.isfinite(out).all()
    # after one backward every parameter has a gradient (DDP needs no unused parameters) ...
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    # ... and zero-initialised gates/output make a fresh model predict exactly zero
    assert torch.count_nonzero(tiny_dit(attention)(x, torch.rand(2, frames), context, context_mask)) == 0


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for flag in (False, True):
        model = tiny_dit("factorized").train()
        model.grad_checkpointing = flag
        torch.manual_seed(1)
        for p in model.parameters():        # away from the zero init, so every gradient is non-zero
            torch.nn.init.normal_(p, std=0.05)
        x, ctx = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 3, TEXT_DIM)
        model(x, torch.rand(2, 3), ctx, torch.ones(2, 3, dtype=torch.bool)).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.count_nonzero(grads[0]) > 0.9 * grads[0].numel()
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_dit_is_not_blind_to_text_mask_or_condition():
    model = tiny_dit("full")
    for p in model.parameters():            # leave the zero init so outputs depend on inputs
        torch.nn.init.normal_(p, std=0.05)
    x, ctx = torch.randn(1, 4, 3, 4, 4), torch.randn(1, 3, TEXT_DIM)
    t = torch.full((1, 3), 0.5)
    base = model(x, t, ctx, torch.ones(1, 3, dtype=torch.bool))
    masked = model(x, t, ctx, torch.tensor([[True, False, False]]))
    cond = model(x, t, ctx, torch.ones(1, 3, dtype=torch.bool), torch.tensor([[1.0, 0, 0]]))
    assert not torch.allclose(base, masked) and not torch.allclose(base, cond)


def test_factorized_attention_keeps_frames_apart_in_its_spatial_pass():
    # with only spatial mixing, the first frame's output cannot depend on the last frame (causal in
    # time would be stronger; here we check the temporal pass is what mixes frames)
    model = tiny_dit("factorized")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    for block in model.blocks:
        torch.nn.init.zeros_(block.attn_t.proj.weight)
        torch.nn.init.zeros_(block.attn_t.proj.bias)
    x = torch.randn(1, 4, 3, 4, 4)
    y = x.clone()
    y[:, :, 2] += 1.0
    args = (torch.full((1, 3), 0.3), torch.randn(1, 2, TEXT_DIM), torch.ones(1, 2, dtype=torch.bool))
    assert torch.allclose(model(x, *args)[:, :, 0], model(y, *args)[:, :, 0], atol=1e-6)


def test_rope_rotates_by_position_and_size_free():
    cos, sin = rope_3d((3, 2, 5), head_dim=16, theta=10000.0)
    assert cos.shape == (3, 10, 8)
    assert torch.allclose(cos[0, 0], torch.ones(8))     # position (0, 0, 0) is not rotated
    assert not torch.allclose(cos[1, 0], cos[0, 0]) and not torch.allclose(cos[0, 1], cos[0, 0])


def test_abs_pos_and_pooled_text_options():
    """Fixed absolute positions make a token's output depend on where it is; the pooled caption
    reaches every token through adaLN and ignores padding."""
    torch.manual_seed(0)
    cfg = DiTConfig(size="tiny", depth=2, hidden_size=48, num_heads=4, abs_pos=True, pooled_text=True)
    model = DiT(cfg, in_channels=4, text_dim=TEXT_DIM)
    for p in model.parameters():  # leave the zero-initialised identity start, so outputs react
        torch.nn.init.normal_(p, std=0.1)
    table = sincos_3d((3, 2, 5), 48, 10000.0)
    assert table.shape == (3, 10, 48) and len({tuple(r.tolist()) for r in table.reshape(30, 48)}) == 30

    flat = torch.zeros(1, 4, 1, 4, 4)        # the same value everywhere: only positions tell tokens apart
    args = (torch.full((1, 1), 0.5), torch.randn(1, 3, TEXT_DIM), torch.ones(1, 3, dtype=torch.bool))
    out = model(flat, *args)
    assert not torch.allclose(out[..., :2, :2], out[..., 2:, 2:], atol=1e-4)

    text = torch.randn(1, 4, TEXT_DIM)
    mask = torch.tensor([[True, True, False, False]])
    noisy_padding = text.clone()
    noisy_padding[:, 2:] = 100.0
    x, t = torch.randn(1, 4, 1, 4, 4), torch.full((1, 1), 0.5)
    assert torch.allclose(model(x, t, text, mask), model(x, t, noisy_padding, mask), atol=1e-5)
    other = text.clone()
    other[:, 0] += 1.0
    assert not torch.allclose(model(x, t, text, mask), model(x, t, other, mask), atol=1e-4)


def test_dit_rejects_sizes_a_patch_does_not_divide():
    with pytest.raises(ValueError, match="divisible"):
        tiny_dit("full")(torch.randn(1, 4, 1, 5, 4), torch.rand(1, 1), torch.randn(1, 2, TEXT_DIM),
                         torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ConfigError, match="size"):
        DiTConfig(size="huge")


def test_vae_shapes_and_causality():
    torch.manual_seed(0)
    vae = CausalVAE(VAEConfig(channels=8, channel_mults=[1, 2, 2], num_res_blocks=1, latent_channels=4,
                              spatial_compression=4, temporal_compression=2))
    for frames, height, width in [(1, 16, 16), (5, 16, 24), (6, 8, 16), (9, 24, 8)]:
        x = torch.rand(1, 3, frames, height, width) * 2 - 1
        recon, mean, _ = vae(x)
        assert recon.shape == x.shape
        assert mean.shape == (1, 4, vae.latent_frames(frames), height // 4, width // 4)
    # the first frame is encoded alone; later frames never change earlier latents
    x = torch.rand(1, 3, 9, 16, 16)
    y = x.clone()
    y[:, :, 5:] = 0
    zx, zy = vae.encode(x), vae.encode(y)
    assert torch.allclose(zx[:, :, :3], zy[:, :, :3], atol=1e-5)
    assert not torch.allclose(zx[:, :, 3:], zy[:, :, 3:], atol=1e-3)
    assert torch.allclose(vae.encode(x[:, :, :1]), zx[:, :, :1], atol=1e-5)
    with pytest.raises(ConfigError, match="spatial_compression"):
        VAEConfig(channel_mults=[1, 2], spatial_compression=8)


def test_timesteps_shift_towards_noise_with_more_tokens():
    cfg = FlowConfig(shift_base_tokens=256)
    small, big = resolution_shift(256, cfg), resolution_shift(256 * 16, cfg)
    assert small == 1.0 and big == 4.0
    g = torch.Generator().manual_seed(0)
    t_small = sample_timesteps(4000, cfg, small, torch.Generator().manual_seed(0))
    t_big = sample_timesteps(4000, cfg, big, g)
    assert 0 < t_small.min() and t_small.max() < 1
    assert 0.45 < t_small.mean() < 0.55 and t_big.mean() > t_small.mean() + 0.15
    assert torch.allclose(shift_time(torch.tensor([0.0, 1.0]), 3.0), torch.tensor([0.0, 1.0]))


def test_condition_masks_follow_the_configured_shares():
    cfg = FlowConfig(first_frame=0.4, first_k=0.2, last_frame=0.2, first_and_last=0.1, max_k=3)
    masks = sample_condition_masks(4000, 6, cfg, torch.Generator().manual_seed(0))
    first_only = (masks[:, 0] == 1) & (masks[:, 1:].sum(1) == 0)
    last_only = (masks[:, -1] == 1) & (masks[:, :-1].sum(1) == 0)
    none = masks.sum(1) == 0
    assert abs(none.float().mean() - 0.1) < 0.03
    assert abs(last_only.float().mean() - 0.2) < 0.03
    assert first_only.float().mean() > 0.4            # first_frame plus first_k with k = 1
    assert (masks.sum(1) < 6).all()                   # something is always left to generate
    assert sample_condition_masks(10, 1, cfg).sum() == 0   # an image has nothing to condition on


def test_flow_loss_ignores_conditioned_frames():
    x, noise = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    cond = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    seen = {}

    def oracle(z, t, ctx, mask, cm):      # predicts the true velocity except on the clean frame
        seen["z"], seen["t"] = z, t
        v = noise - x
        v[:, :, 0] += 100.0 * cm[:, 0, None, None, None]
        return v
    loss = flow_loss(oracle, x, torch.zeros(2, 1, 8), torch.ones(2, 1, dtype=torch.bool),
                     torch.tensor([0.7, 0.7]), noise, cond)
    assert torch.allclose(loss, torch.zeros(2), atol=1e-6)
    assert torch.equal(seen["z"][0, :, 0], x[0, :, 0]) and seen["t"][0, 0] == 0 and seen["t"][0, 1] == 0.7


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_sampler_reaches_the_data_with_the_exact_velocity(solver: str):
    target = torch.randn(1, 4, 3, 4, 4)

    def exact(z, t, ctx, mask, cm):      # straight path to `target`: v = (z - target) / t
        return (z - target) / t[:, None, :, None, None].clamp_min(1e-6)
    noise = torch.randn_like(target)
    ctx, null = torch.zeros(1, 2, 8), torch.zeros(1, 3, 8)
    out = sample(exact, noise, ctx, torch.ones(1, 2, dtype=torch.bool), null, torch.ones(1, 3, dtype=torch.bool),
                 steps=8, cfg_scale=3.0, shift=2.0, solver=solver)
    assert torch.allclose(out, target, atol=1e-4)
    # image-to-video: a given first latent frame comes back unchanged
    given = torch.randn_like(target)
    cm = torch.tensor([[1.0, 0.0, 0.0]])
    out = sample(exact, noise, ctx, torch.ones(1, 2, dtype=torch.bool), null, torch.ones(1, 3, dtype=torch.bool),
                 steps=4, cfg_scale=1.0, solver=solver, cond_latents=given, cond_mask=cm)
    assert torch.equal(out[:, :, 0], given[:, :, 0])


def test_guidance_is_combined_in_float32_when_the_model_answers_in_bf16():
    """Under bf16 autocast the model's velocity comes back in bf16; guidance (v_u + s (v_c - v_u))
    magnifies the rounding of the difference unless it is taken in float32."""
    torch.manual_seed(0)
    base, delta = torch.randn(1, 4, 3, 4, 4), 1e-2 * torch.randn(1, 4, 3, 4, 4)

    def bf16_model(z, t, ctx, mask, cm):     # cond and uncond answers differ a little
        v = torch.cat([base + delta, base]) + 0.1 * z
        return v.to(torch.bfloat16)
    noise = torch.randn(1, 4, 3, 4, 4)
    ctx, ones = torch.zeros(1, 2, 8), torch.ones(1, 2, dtype=torch.bool)
    out = sample(bf16_model, noise, ctx, ones, ctx, ones, steps=4, cfg_scale=7.0)
    z = noise                                # the same integration with the answers upcast first
    times = shift_time(torch.linspace(1.0, 0.0, 5, dtype=torch.float64), 1.0).tolist()
    for t, t_next in zip(times[:-1], times[1:]):
        v_cond, v_uncond = bf16_model(torch.cat([z, z]), None, None, None, None).float().chunk(2)
        z = z + (t_next - t) * (v_uncond + 7.0 * (v_cond - v_uncond))
    assert out.dtype == torch.float32 and torch.allclose(out, z, atol=1e-6)


def test_text_encoder_loads_a_local_t5_encoder_and_the_bundled_default(tmp_path):
    """Any transformers encoder by path: a tiny T5 saved locally goes through the same code as a hub id."""
    import shutil

    from transformers import T5Config, T5EncoderModel

    from trainer.text import TextEncoder, resolve_text_encoder
    bundled = resolve_text_encoder("all-MiniLM-L6-v2")
    config = T5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    T5EncoderModel(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(Path(bundled) / name, tmp_path / name)
    t5 = TextEncoder(str(tmp_path), max_length=16)
    states, mask = t5(["a red blob moving left", "", "a red blob moving left"])
    assert t5.dim == 32 and states.shape[:2] == mask.shape and states.shape[2] == 32
    assert mask[1].sum() < mask[0].sum() and torch.equal(states[0], states[2])
    assert (states[1][~mask[1]] == 0).all()
    minilm = TextEncoder()
    assert minilm.dim == 384 and not any(p.requires_grad for p in minilm.parameters())
