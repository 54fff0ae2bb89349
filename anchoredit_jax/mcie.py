"""MCIE (Multi-turn Consistent Image Editing, seeds 003-004): training-free, on the rectified-flow DiT.

    state = mcie.start(model, params, source_latent, null_text, null_mask)          # window 1, no anchor
    turn = jax.jit(functools.partial(mcie.edit_turn, model, MCIESettings()))       # compiled once
    latent, state = turn(params, state, text, text_mask, null_text, null_mask, rng)
    latents, state = mcie.edit_sequence(model, settings, params, state, texts, masks, null_text, null_mask, rng)

Convention: x_t = (1 - t) x0 + t eps, t=1 noise, t=0 data, dx/dt = v = eps - x0. X_{j,0} is the
clean latent of turn j (X_{0,0} the source). Turn k:

 1. Inversion of the previous frame X_{k-1,0} to noise, t: 0 -> 1, with a high-order solver
    (midpoint = RF-Solver, FireFlow; sampler.py's code on the mirrored grid) and RF-Inversion's
    single-objective LQR controller (Rout et al. 2024, Alg. 1) toward a fresh y1 ~ N(0, I):
        v_inv(x, t) = v_u(x, t) + gamma * ((y1 - x) / (1 - t) - v_u(x, t))
    v_u is the UNCONDITIONAL velocity (null instruction, no CFG), as RF-Inversion inverts with the
    empty prompt; here "the previous frame in memory + null instruction" is the model's natural
    "this frame, unedited" field, the same memory the sampling sees.
 2. Adaptive attention highlighting: one pass on the inverted noise at t=1 with the instruction
    returns every block's cross-attention map of the instruction's content tokens (heads averaged,
    [CLS]/[SEP] excluded). Blocks are ranked by mean activation; the maps ranked in
    `highlight_ranks` (fractions; the paper's 10th-14th of FLUX's 19 blocks) are z-scored,
    squashed by a sigmoid, averaged and thresholded into a token mask M (highlight_in inside,
    highlight_out outside). The sampling's conditional branch multiplies its cross-attention
    probabilities by M in every block (not renormalised: a per-query factor would cancel).
    Deviation, on purpose: the paper refreshes M at every step from the previous step's maps; here
    it is computed once per turn, so the sampler stays stateless and every solver works unchanged.
 3. Controlled sampling, t: 1 -> 0, with the dual-objective LQR (RF-Inversion Alg. 2 with the
    weighted reference of the paper's Proposition 1):
        X_dual = X_{0,0} + lam * (X_{k-1,0} - X_{0,0})          (the CLEAN source and previous frame)
        v_s(x, t) = v_g(x, t) + eta_t * ((x - X_dual) / t - v_g(x, t))
    v_g is the CFG velocity (guidance on the turn's instruction, same memory); (x - X_dual) / t is
    the velocity of the straight line from x to X_dual at t=0; eta_t = eta during the first
    round(guided_frac * num_steps) steps, 0 after.
 4. The result is written to the memory (memory.update), as AnchorEdit's editor does.

The memory is an AnchorMemory: MCIE alone uses window 1 without anchor (the previous frame only,
the stage-1 model's single-turn condition); with anchor + window W it stacks on AnchorEdit. The
state (source, previous frame, memory) has a fixed shape: every turn runs one compiled program.
With gamma = eta = 0, highlighting off and the same grid, inversion then sampling is the plain
ODE there and back (tests/test_mcie.py checks reconstruction and solver order).
"""
from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp

from anchoredit_jax import editor, sampler
from anchoredit_jax import memory as mem_lib
from anchoredit_jax.model import WanDiT

SOLVERS = ("euler", "midpoint", "fireflow")  # deterministic ODE solvers: inversion needs one


@dataclasses.dataclass(frozen=True)
class MCIESettings:
    """MCIE's knobs (static: part of the compiled program). Defaults: the paper / RF-Inversion's code."""

    num_steps: int = 8  # the paper edits in 8 FireFlow steps
    inversion_steps: int = 0  # 0: num_steps, the sampling grid mirrored (what makes no-edit reconstruct)
    method: str = "fireflow"  # euler | midpoint | fireflow, for inversion and sampling
    shift: float = 1.0
    guidance: float = 3.0  # classifier-free guidance of the sampling; inversion runs unguided
    gamma: float = 0.5  # inversion LQR strength (RF-Inversion's default)
    eta: float = 0.9  # sampling LQR strength
    lam: float = 0.7  # X_dual = X_src + lam (X_prev - X_src)
    guided_frac: float = 0.25  # share of the sampling steps with the LQR on (the first ones)
    highlight_in: float = 2.0
    highlight_out: float = 0.8
    highlight_ranks: tuple[float, float] = (0.47, 0.74)  # fractions of the blocks ranked by activation
    highlight_threshold: float = 0.6  # on the sigmoid of the z-scored maps (0.5 = the map's mean)

    def validate(self) -> "MCIESettings":
        def bad(what):
            raise ValueError(f"MCIE settings: {what}")

        if self.method not in SOLVERS:
            bad(f"method must be one of {SOLVERS} (inversion needs a deterministic solver), got {self.method!r}")
        if self.num_steps < 1 or self.inversion_steps < 0:
            bad(f"num_steps must be >= 1 and inversion_steps >= 0, got {self.num_steps}, {self.inversion_steps}")
        if self.shift <= 0:
            bad(f"shift must be > 0, got {self.shift}")
        for name in ("gamma", "eta", "guided_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.highlight_in <= 0 or self.highlight_out <= 0:
            bad(f"highlight factors must be > 0, got in={self.highlight_in}, out={self.highlight_out}")
        lo, hi = self.highlight_ranks
        if not 0.0 <= lo < hi <= 1.0:
            bad(f"highlight_ranks must be fractions 0 <= lo < hi <= 1, got {self.highlight_ranks}")
        if not 0.0 < self.highlight_threshold < 1.0:
            bad(f"highlight_threshold must be in (0, 1), got {self.highlight_threshold}")
        return self

    @property
    def inv_steps(self) -> int:
        return self.inversion_steps or self.num_steps

    @property
    def guided_steps(self) -> int:
        return round(self.guided_frac * self.num_steps)

    @property
    def highlight(self) -> bool:
        return (self.highlight_in, self.highlight_out) != (1.0, 1.0)

    def rank_range(self, num_layers: int) -> tuple[int, int]:
        """Blocks [lo, hi) of the activation ranking (descending); at least one."""
        lo = min(round(self.highlight_ranks[0] * num_layers), num_layers - 1)
        return lo, max(lo + 1, min(round(self.highlight_ranks[1] * num_layers), num_layers))


@flax.struct.dataclass
class MCIEState:
    """Carried across turns: X_{0,0} and X_{k-1,0} (clean latents [B, h, w, C]) and the memory."""

    source: jax.Array
    prev: jax.Array
    memory: mem_lib.AnchorMemory

    @property
    def nbytes(self) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self))


# ----------------------------------------------------------------------------- controlled ODEs
def dual_reference(source, prev, lam: float):
    """X_dual = X_{0,0} + lam (X_{k-1,0} - X_{0,0}): lam 0 is the source, 1 the previous frame."""
    return source + lam * (prev - source)


def inversion_velocity(velocity_fn, y1, gamma: float, eps: float = 1e-6):
    """RF-Inversion's controlled forward field: (x, t) -> v + gamma ((y1 - x) / (1 - t) - v)."""
    def fn(x, t):
        v = velocity_fn(x, t)
        return v + gamma * ((y1 - x) / jnp.maximum(1.0 - t, eps) - v)

    return fn


def sampling_velocity(velocity_fn, reference, eta: float, t_stop, eps: float = 1e-6):
    """Controlled reverse field: (x, t) -> v + eta [t > t_stop] ((x - reference) / t - v).

    (x - reference) / t is dx/dt of the straight line through x that reaches `reference` at t=0.
    The gate is on time: with t_stop = grid[n] exactly the first n steps (midpoints included) are guided.
    """
    def fn(x, t):
        v = velocity_fn(x, t)
        strength = jnp.where(t > t_stop, eta, 0.0)
        return v + strength * ((x - reference) / jnp.maximum(t, eps) - v)

    return fn


def invert(velocity_fn, x0, num_steps: int, *, method: str = "fireflow", shift: float = 1.0, gamma: float = 0.0,
           y1=None):
    """Integrates dx/dt = v from t=0 (x0, data) to t=1 (noise) on the sampling grid reversed.

    Reuses sampler.sample in the reflected time s = 1 - t (dx/ds = -v(x, 1 - s)); the Wan shift s
    of the grid in t is the shift 1/s of the grid in s. gamma > 0 needs y1, the LQR target noise.
    """
    if method not in SOLVERS:
        raise ValueError(f"inversion needs one of {SOLVERS}, got {method!r}")
    if gamma:
        if y1 is None:
            raise ValueError("inversion with gamma > 0 needs y1, the target noise")
        velocity_fn = inversion_velocity(velocity_fn, y1, gamma)
    return sampler.sample(lambda x, s: -velocity_fn(x, 1.0 - s), x0, num_steps, method=method, shift=1.0 / shift)


def controlled_sample(velocity_fn, x1, num_steps: int, *, method: str = "fireflow", shift: float = 1.0,
                      eta: float = 0.0, reference=None, guided_steps: int = 0):
    """sampler.sample from x1 at t=1 with the LQR toward `reference` in the first `guided_steps` steps."""
    if method not in SOLVERS:
        raise ValueError(f"MCIE sampling needs one of {SOLVERS}, got {method!r}")
    if reference is not None:
        t_stop = sampler.timestep_grid(num_steps, shift)[guided_steps]
        velocity_fn = sampling_velocity(velocity_fn, reference, eta, t_stop)
    return sampler.sample(velocity_fn, x1, num_steps, method=method, shift=shift)


# ----------------------------------------------------------------------------- attention highlighting
def content_token_weights(text_mask):
    """[B, L] valid-prefix mask -> [B, L] weights summing to 1 over the instruction's content tokens.

    [CLS] and [SEP] are left out: over ALL valid tokens a query's probabilities sum to 1, so the
    average would be the same everywhere. An instruction without content tokens uses all valid ones.
    """
    valid = text_mask.astype(bool)
    n = valid.sum(-1, keepdims=True)
    idx = jnp.arange(valid.shape[-1])[None]
    content = valid & (idx >= 1) & (idx < n - 1)
    w = jnp.where(content.any(-1, keepdims=True), content, valid).astype(jnp.float32)
    return w / jnp.maximum(w.sum(-1, keepdims=True), 1.0)


def highlight_scale(maps, settings: MCIESettings):
    """Per-block cross-attention maps [L, B, N] -> token scale [B, N] (highlight_in / highlight_out).

    Blocks ranked by mean activation (descending); those in settings.rank_range are z-scored per
    map, squashed by a sigmoid, averaged and thresholded.
    """
    lo, hi = settings.rank_range(maps.shape[0])
    order = jnp.argsort(-maps.mean(-1), axis=0)[lo:hi]  # [n, B] block indices
    z = (maps - maps.mean(-1, keepdims=True)) / (maps.std(-1, keepdims=True) + 1e-6)
    avg = jnp.take_along_axis(jax.nn.sigmoid(z), order[:, :, None], axis=0).mean(0)
    return jnp.where(avg > settings.highlight_threshold, settings.highlight_in, settings.highlight_out)


def attention_maps(model: WanDiT, params, mem: mem_lib.AnchorMemory, x, t, text, text_mask):
    """Cross-attention maps of the instruction's content tokens for the next frame: [L, B, N]."""
    b = x.shape[0]
    _, aux = model.apply({"params": params}, x[:, None], jnp.full((b, 1), t), text[:, None], text_mask[:, None],
                         mem_lib.query_position(mem)[:, None], mode="memory", memory=mem_lib.read(mem),
                         xattn_probe=content_token_weights(text_mask)[:, None])
    return aux["xattn_maps"][:, :, 0]


# ----------------------------------------------------------------------------- turns
def start(model: WanDiT, params, source, null_text, null_mask, *, window: int = 1, keep_anchor: bool = False):
    """State with X_{0,0} = X_{prev} = source [B, h, w, C] and a memory holding it (editor.start)."""
    mem = editor.start(model, params, source, null_text, null_mask, window=window, keep_anchor=keep_anchor)
    return MCIEState(source=source, prev=source, memory=mem)


def edit_turn(model: WanDiT, settings: MCIESettings, params, state: MCIEState, text, text_mask, null_text, null_mask,
              rng):
    """One turn: text [B, L, D], text_mask [B, L] -> (latent [B, h, w, C], state with it). Steps in the module doc."""
    settings.validate()
    mem = state.memory
    # 1. invert the previous frame with the unconditional velocity (one branch, no CFG)
    v_null = editor.guided_velocity_fn(model, params, mem, null_text, null_mask, null_text, null_mask, 1.0)
    x1 = invert(v_null, state.prev, settings.inv_steps, method=settings.method, shift=settings.shift,
                gamma=settings.gamma, y1=jax.random.normal(rng, state.prev.shape, state.prev.dtype))
    # 2. highlighting mask from the instruction's cross-attention at t=1, on the conditional branch only
    kwargs = None
    if settings.highlight:
        scale = highlight_scale(attention_maps(model, params, mem, x1, 1.0, text, text_mask), settings)
        kwargs = {"xattn_scale": jnp.concatenate([scale, jnp.ones_like(scale)])[:, None]}  # [2B, 1, N]
    fn = sampler.guided(editor.velocity_fn(model, params, mem, text, text_mask, null_text, null_mask,
                                           model_kwargs=kwargs), settings.guidance)
    # 3. dual-objective controlled sampling
    latent = controlled_sample(fn, x1, settings.num_steps, method=settings.method, shift=settings.shift,
                               eta=settings.eta, reference=dual_reference(state.source, state.prev, settings.lam),
                               guided_steps=settings.guided_steps)
    # 4. the accepted frame enters the memory
    mem = mem_lib.update(model, params, mem, latent, text, text_mask)
    return latent, state.replace(prev=latent, memory=mem)


def edit_sequence(model: WanDiT, settings: MCIESettings, params, state: MCIEState, texts, text_masks, null_text,
                  null_mask, rng):
    """All turns as one lax.scan with the state as the carry (as editor.edit_sequence).

    texts [K, B, L, D], text_masks [K, B, L] -> (latents [K, B, h, w, C], final state).
    Turn k uses jax.random.fold_in(rng, k), as an interactive session does.
    """
    def turn(state, text, mask, key):
        return edit_turn(model, settings, params, state, text, mask, null_text, null_mask, key)

    return editor.scan_turns(turn, state, texts, text_masks, rng)
