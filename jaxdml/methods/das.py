"""Densely-Anchored Sampling (DAS; Liu et al., ECCV 2022) as pure functions over a state pytree.

DAS adds embeddings around each real one, `v' = s * v + b`, and feeds real and generated
embeddings together to the usual miner and loss:

  * Discriminative Feature Scaling (DFS): `s` is 1 except on the K dimensions a class activates
    most often, where it is drawn from `U[left, right)`. A frequency recorder counts, per class,
    how often each dimension is among the K largest (signed) values of an embedding of that class.
  * Memorized Transformation Shifting (MTS): `b = shift_scale * t`, where `t` is drawn uniformly
    from a per-class FIFO bank of intra-class differences `v_a - v_b` seen in past batches.

All of it lives in one `State` (fixed shapes, so it can sit in a train state, be checkpointed,
and be updated inside `jax.jit`):

    state = init(num_classes=100, dim=512)
    state = update(state, z, y)                      # record the batch (no gradient)
    z_gen, y_gen = generate(state, z, y, key)        # [3B, d], [3B]
    z_all, y_all = combine(z, y, z_gen, y_gen)       # [4B, d]: real first, then generated
    loss = multi_similarity_loss(z_all, y_all)           # any loss, miner or target builder

`apply` does the three steps in the authors' order (update, then generate from the updated
state, then concatenate). `pairs` gives the (target, mask) of the combined set for the matrix
form of the losses, and `loss` adds the recipe's auxiliary loss. `copies` is the control that
isolates DAS's own idea: R exact copies of each real embedding in place of the generated ones
(the batch repeated R + 1 times: same size, labels and loss), `Settings(generation="off")` in
the objective. `recipe` gives the DAS settings of a published run, `full_recipe` the whole run
(loss, miner, settings, images per class).

Reference: L. Liu, S. Huang, Z. Zhuang, R. Yang, M. Tan, Y. Wang, "Densely-Anchored Sampling for
Deep Metric Learning", ECCV 2022; official code github.com/lizhaoliu-Lec/DAS
(`modules/embedding_producer.py`; defaults from `scripts/parameters.py`; recipes from
`table1.sh` and `table2.sh`).
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from jaxdml import _checks, objectives, similarity, targets
from jaxdml.objectives import Objective

Array = jax.Array


class State(NamedTuple):
  """The DAS memory, one row per training class.

  Attributes:
    frequency: [C, d] int32, frequency recorder: how many embeddings of class c had dimension j
      among their K largest values. Cumulative, never decayed.
    top_dims: [C, K] int32, the DFS mask of each class, stored as the indices of the K largest
      entries of `frequency[c]` (`mask` gives the binary [C, d] form of the paper).
    bank: [C, Z, d], the MTS bank of intra-class differences, a ring of Z slots per class.
    bank_count: [C] int32, filled slots per class (<= Z); slots `[0, count)` hold entries.
    bank_ptr: [C] int32, next slot to write per class; once full, it points at the oldest entry.
  """

  frequency: Array
  top_dims: Array
  bank: Array
  bank_count: Array
  bank_ptr: Array


def init(num_classes: int, dim: int, *, num_scaled_dims: int = 4, bank_size: int = 10,
             dtype=jnp.float32) -> State:
  """An empty DAS state.

  Args:
    num_classes: C, the number of training classes; labels must lie in [0, C).
    dim: d, the embedding dimension.
    num_scaled_dims: K, the number of dimensions DFS scales per class (`das_dfs_num_scale`,
      default 4; the Table 1 recipes use 8).
    bank_size: Z, the capacity of each class's MTS bank (`das_mts_num_transformation_bank`,
      default 10).
    dtype: floating dtype of the bank.

  Returns:
    A `State` with zero counts and empty banks. `top_dims` starts as the first K dimensions,
    which is what the top-K of an all-zero frequency row gives.

  The bank holds C * Z * d values (as in the authors' code, one bank per class): 11,318 SOP
  classes, Z = 10 and d = 512 make 58M floats.

  >>> state = init(num_classes=3, dim=8)
  >>> state.bank.shape, state.top_dims.shape
  ((3, 10, 8), (3, 4))
  """
  if num_classes < 1 or dim < 1:
    raise ValueError(f"num_classes and dim must be >= 1, got {num_classes}, {dim}.")
  if not 1 <= num_scaled_dims <= dim:
    raise ValueError(f"num_scaled_dims must be in [1, dim={dim}], got {num_scaled_dims}.")
  if bank_size < 1:
    raise ValueError(f"bank_size must be >= 1, got {bank_size}.")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"dtype must be floating, got {dtype}.")
  top = jnp.broadcast_to(jnp.arange(num_scaled_dims, dtype=jnp.int32),
                         (num_classes, num_scaled_dims))
  return State(
      frequency=jnp.zeros((num_classes, dim), jnp.int32),
      top_dims=top,
      bank=jnp.zeros((num_classes, bank_size, dim), dtype),
      bank_count=jnp.zeros((num_classes,), jnp.int32),
      bank_ptr=jnp.zeros((num_classes,), jnp.int32))


def mask(state: State) -> Array:
  """[C, d] bool: the binary DFS mask M of the paper (True on each class's top-K dimensions).

  >>> mask(init(2, 5, num_scaled_dims=2)).astype(int).tolist()
  [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]]
  """
  num_classes, dim = state.frequency.shape
  rows = jnp.arange(num_classes)[:, None]
  return jnp.zeros((num_classes, dim), bool).at[rows, state.top_dims].set(True)


def _check_batch(state: State, z: Array, y: Array) -> None:
  _checks.embeddings(z, "z")
  _checks.labels(y, z.shape[0], "y")
  dim = state.frequency.shape[1]
  if z.shape[1] != dim:
    raise ValueError(f"`z` has dimension {z.shape[1]} but the DAS state was built for {dim}.")


def update(state: State, z: Array, y: Array) -> State:
  """Records a batch in the frequency recorder, the DFS masks and the MTS banks.

  Frequency recorder: for every sample (v, y), `frequency[y, j] += 1` for the K largest entries
  v_j (signed values, ties to the lower index). Then `top_dims[c]` is recomputed for the classes in
  the batch as the K largest entries of `frequency[c]`.

  MTS bank: for every class t in the batch with embeddings E_t (in batch order), all ordered
  differences `E_t[a] - E_t[b]` (a-major order), without the all-zero ones (a = b or duplicate
  embeddings), are pushed into the ring of class t; with more than Z at once only the last Z are
  kept. With two samples per class that is `{v1 - v2, v2 - v1}` per class per batch.

  Everything is stored without gradient. Pure and jit-able; cost O(B^2 d) for the differences.

  Args:
    state: the current `State`.
    z: [B, d] floating embeddings, as fed to the loss.
    y: [B] integer labels in [0, C) (not checked under jit; out-of-range labels are dropped from
      the recorder and the banks).

  Returns:
    The new state.

  Deviation from the authors' code: when more than Z differences of one class arrive in one batch,
  the code keeps the last Z but leaves its write pointer where it was, so the next writes may
  replace entries other than the oldest; here the ring pointer moves on and the oldest entries are
  always replaced first. The set of stored differences right after such a batch is the same.
  Ties in the top-K follow `jax.lax.top_k` (lower index first); torch.topk leaves them unspecified.

  >>> import jax.numpy as jnp
  >>> state = update(init(2, 4, num_scaled_dims=1), jnp.eye(4), jnp.array([0, 0, 1, 1]))
  >>> state.bank_count.tolist(), state.top_dims.tolist()
  ([2, 2], [[0], [2]])
  """
  _check_batch(state, z, y)
  num_classes, bank_size, _ = state.bank.shape
  k = state.top_dims.shape[1]
  z = jax.lax.stop_gradient(z)
  y = y.astype(jnp.int32)
  b = z.shape[0]
  # Scatter index of each sample's class; out-of-range labels (also negative ones, which would
  # otherwise wrap around) point past the end and their writes are dropped.
  ys = jnp.where((y >= 0) & (y < num_classes), y, num_classes)
  yc = jnp.clip(y, 0, num_classes - 1)

  # DFS: frequency recorder, then the top-K dimensions of the classes just seen.
  _, idx = jax.lax.top_k(z, k)                                            # [B, K]
  freq = state.frequency.at[ys[:, None], idx].add(1, mode="drop")
  _, rows = jax.lax.top_k(freq[yc], k)                                    # [B, K]
  top_dims = state.top_dims.at[ys].set(rows.astype(jnp.int32), mode="drop")

  # MTS: all ordered intra-class differences, ranked in the authors' enqueue order.
  diff = z[:, None, :] - z[None, :, :]                                    # [B, B, d]
  same = y[:, None] == y[None, :]
  # The self-pairs are excluded by index: inside a larger jitted program XLA may compute the two
  # copies of z_a differently (fusion duplicates the producer), leaving a tiny non-zero z_a - z_a.
  # Exact duplicates among different samples are dropped by value, as in the authors' code.
  eye = jnp.eye(b, dtype=bool)
  valid = same & ~eye & (jnp.sum(jnp.abs(diff), axis=-1) > 0)
  per_row = jnp.sum(valid, axis=1, dtype=jnp.int32)                       # [B]
  earlier = same & (jnp.arange(b)[None, :] < jnp.arange(b)[:, None])      # i' < i, same class
  before = jnp.sum(jnp.where(earlier, per_row[None, :], 0), axis=1)       # [B]
  incoming = jnp.sum(jnp.where(same, per_row[None, :], 0), axis=1)        # n_t for row i's class
  within = jnp.cumsum(valid, axis=1, dtype=jnp.int32) - valid            # rank inside row i
  rank = before[:, None] + within                                         # [B, B]
  keep = valid & (rank >= incoming[:, None] - bank_size)
  ptr = state.bank_ptr[yc]
  slot = (ptr[:, None] + rank) % bank_size
  cls = jnp.where(keep, ys[:, None], num_classes)                         # out of range: dropped
  cls = jnp.broadcast_to(cls, (b, b))
  bank = state.bank.at[cls, slot].set(diff.astype(state.bank.dtype), mode="drop")
  n_new = jnp.zeros((num_classes,), jnp.int32).at[ys].add(per_row, mode="drop")
  count = jnp.minimum(state.bank_count + n_new, bank_size)
  bank_ptr = (state.bank_ptr + n_new) % bank_size
  return State(freq, top_dims, bank, count, bank_ptr)


def generate(
    state: State,
    z: Array,
    y: Array,
    key: Array,
    *,
    num_generated: int = 3,
    scale_range: tuple[float, float] = (0.5, 2.0),
    shift_scale: float = 0.01,
    detach: bool = False,
    normalize: bool = True,
) -> tuple[Array, Array]:
  """Generates `num_generated` embeddings around each real one.

  For round r = 1..R and each sample (v, y):

      s_j ~ U[left, right) for j in top_dims[y],  s_j = 1 otherwise        (DFS)
      t   ~ uniform over the filled slots of bank[y]  (t = 0 if empty)      (MTS)
      v'  = s * v + shift_scale * t,  then v' / ||v'|| if `normalize`

  Scale factors and bank draws are independent per sample, per round (and per scaled dimension).

  Args:
    state: a `State`, normally already updated with this batch (`update`), as in the
      authors' code, so the batch's own differences can be drawn.
    z: [B, d] floating embeddings.
    y: [B] integer labels in [0, C).
    key: a `jax.random` key.
    num_generated: R, embeddings per real one (`das_num_produce`, default 3).
    scale_range: (left, right) of the DFS factors (`das_dfs_scale_left/right`, default
      (0.5, 2.0); the CUB/Cars recipes use (0.99, 1.01)).
    shift_scale: the MTS factor r_b (`das_mts_scale`, default 0.01; most SOP recipes use 0.1).
    detach: if True, the generated embeddings carry no gradient back to `z` (`--detach`, off by
      default, on in the CUB/Cars recipes); if False, gradients flow through `s * v`.
    normalize: L2-normalise the generated embeddings (default True; `--das_not_normalize` turns
      it off for losses on unnormalised embeddings, lifted structure and N-pair).

  Returns:
    (z_gen [R*B, d], y_gen [R*B]): round-major (`[gen_1 (B); gen_2 (B); ...]`) with labels
    repeated, the order in which the authors append them after the real batch.

  The keyword arguments are Python values (static under `jax.jit`). The defaults are those of
  the training script (`scripts/parameters.py`, passed on by `scripts/standard.py`); the classes in
  `modules/embedding_producer.py` have their own defaults (detach on, and no normalisation in
  `EmbeddingProducer`) that the script always overrides.

  Normalisation uses `jaxdml.similarity.l2_normalize` (epsilon 1e-12 on the squared norm, where
  torch's F.normalize puts 1e-12 on the norm); this only matters for near-zero vectors.

  >>> import jax, jax.numpy as jnp
  >>> z, y = jnp.eye(4), jnp.array([0, 0, 1, 1])
  >>> state = update(init(2, 4, num_scaled_dims=1), z, y)
  >>> z_gen, y_gen = generate(state, z, y, jax.random.PRNGKey(0), num_generated=2)
  >>> z_gen.shape, y_gen.tolist()
  ((8, 4), [0, 0, 1, 1, 0, 0, 1, 1])
  """
  _check_batch(state, z, y)
  if num_generated < 1:
    raise ValueError(f"num_generated must be >= 1, got {num_generated}.")
  left, right = scale_range
  if not left <= right:
    raise ValueError(f"scale_range must satisfy left <= right, got {scale_range}.")
  if shift_scale < 0:
    raise ValueError(f"shift_scale must be >= 0, got {shift_scale}.")
  num_classes, _, dim = state.bank.shape
  b = z.shape[0]
  k = state.top_dims.shape[1]
  y = y.astype(jnp.int32)
  yc = jnp.clip(y, 0, num_classes - 1)
  src = jax.lax.stop_gradient(z) if detach else z

  k_scale, k_bank = jax.random.split(key)
  scale = jax.random.uniform(k_scale, (num_generated, b, k), z.dtype, left, right)
  r_idx = jnp.arange(num_generated)[:, None, None]
  b_idx = jnp.arange(b)[None, :, None]
  dims = state.top_dims[yc][None]                                          # [1, B, K]
  factor = jnp.ones((num_generated, b, dim), z.dtype).at[r_idx, b_idx, dims].set(scale)

  count = state.bank_count[yc]                                             # [B]
  slot = jax.random.randint(k_bank, (num_generated, b), 0, jnp.maximum(count, 1)[None, :])
  shift = state.bank[yc[None, :], slot]                                    # [R, B, d]
  shift = jnp.where((count > 0)[None, :, None], shift, 0.0)
  shift = jax.lax.stop_gradient(shift).astype(z.dtype)

  out = src[None] * factor + shift_scale * shift
  if normalize:
    out = similarity.l2_normalize(out)
  return out.reshape(num_generated * b, dim), jnp.tile(y, num_generated)


def combine(z: Array, y: Array, z_gen: Array, y_gen: Array) -> tuple[Array, Array]:
  """`[real; generated]` embeddings and labels: the batch every miner and loss then sees.

  >>> import jax.numpy as jnp
  >>> z_all, y_all = combine(jnp.eye(2), jnp.array([0, 1]), jnp.ones((4, 2)),
  ...                        jnp.array([0, 1, 0, 1]))
  >>> z_all.shape, y_all.tolist()
  ((6, 2), [0, 1, 0, 1, 0, 1])
  """
  _checks.embeddings(z, "z")
  _checks.labels(y, z.shape[0], "y")
  _checks.embeddings(z_gen, "z_gen")
  _checks.labels(y_gen, z_gen.shape[0], "y_gen")
  if z_gen.shape[1] != z.shape[1]:
    raise ValueError(f"`z_gen` has dimension {z_gen.shape[1]} but `z` has {z.shape[1]}.")
  return (jnp.concatenate([z, z_gen.astype(z.dtype)], axis=0),
          jnp.concatenate([y, y_gen.astype(y.dtype)], axis=0))


def apply(state: State, z: Array, y: Array, key: Array,
              **generate_kwargs) -> tuple[Array, Array, State]:
  """One DAS step as in the authors' code: update, generate, combine.

  Returns:
    (z_all [(1+R)B, d], y_all [(1+R)B], new_state); `generate_kwargs` go to `generate`.

  >>> import jax, jax.numpy as jnp
  >>> z_all, y_all, state = apply(init(2, 4, num_scaled_dims=1), jnp.eye(4),
  ...                             jnp.array([0, 0, 1, 1]), jax.random.PRNGKey(0))
  >>> z_all.shape, state.bank_count.tolist()
  ((16, 4), [2, 2])
  """
  state = update(state, z, y)
  z_gen, y_gen = generate(state, z, y, key, **generate_kwargs)
  z_all, y_all = combine(z, y, z_gen, y_gen)
  return z_all, y_all, state


def copies(z: Array, y: Array, num_generated: int = 3, *,
           detach: bool = False) -> tuple[Array, Array]:
  """The control of `generate`: `num_generated` exact copies of each real embedding.

  Same shapes, order (round-major) and labels as `generate`, and the same gradient path (none
  with `detach`), but nothing is scaled, shifted or re-normalised: `combine(z, y, *copies(z, y,
  R))` is the batch repeated R + 1 times. Training on it instead of on DAS's output measures
  what repeating the batch alone does (each pair counted (R + 1)^2 times, and each embedding
  paired with its own copies as extra positives).

  Args:
    z: [B, d] floating embeddings.
    y: [B] integer labels.
    num_generated: R.
    detach: the copies carry no gradient back to `z` (as `generate`'s `detach`).

  Returns:
    (z_copies [R*B, d], y_copies [R*B]).

  >>> import jax.numpy as jnp
  >>> z_c, y_c = copies(jnp.eye(2), jnp.array([0, 1]), num_generated=2)
  >>> z_c.tolist(), y_c.tolist()
  ([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], [0, 1, 0, 1])
  """
  _checks.embeddings(z, "z")
  _checks.labels(y, z.shape[0], "y")
  _checks.positive_int(num_generated, "num_generated")
  src = jax.lax.stop_gradient(z) if detach else z
  return jnp.tile(src, (num_generated, 1)), jnp.tile(y, num_generated)


QUERIES = ("all", "real")


def pairs(y: Array, num_generated: int = 3, *, queries: str = "all",
              exclude_source: bool = False) -> tuple[Array, Array]:
  """(target, mask) of the combined batch `[real (B); gen_1 (B); ...; gen_R (B)]`.

  Args:
    y: [B] integer labels of the real batch.
    num_generated: R.
    queries: "all" (default, as the authors' code: every real or generated embedding is an
      anchor against all others) gives [(1+R)B, (1+R)B]; "real" keeps only the real anchors,
      [B, (1+R)B], for `loss(z, y, z_all, y_all, mask=mask)`.
    exclude_source: drop the pairs between embeddings that come from the same real sample (a
      source and its generated copies, and the copies among themselves). Off by default: the
      authors' code treats such pairs as ordinary positives.

  Returns:
    target float32 and mask bool, as `jaxdml.targets.from_labels`; each embedding's pair with
    itself is always masked.

  >>> import jax.numpy as jnp
  >>> target, mask = pairs(jnp.array([0, 1]), num_generated=1)
  >>> target.tolist(), int(mask.sum())
  ([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]], 12)
  """
  _checks.one_of(queries, QUERIES, "queries")
  _checks.check_rank(y, 1, "y", "[B]")
  _checks.check_integer(y, "y")
  if num_generated < 0:
    raise ValueError(f"num_generated must be >= 0, got {num_generated}.")
  b = y.shape[0]
  y_all = jnp.tile(y, 1 + num_generated)
  yq = y_all if queries == "all" else y
  target, mask = targets.from_labels(yq, y_all, exclude_self=True)
  if exclude_source:
    src = jnp.arange(y_all.shape[0]) % max(b, 1)
    mask = mask & (src[: yq.shape[0], None] != src[None, :])
  return target, mask


def loss(loss_fn: Callable[[Array, Array], Array], z: Array, y: Array, z_gen: Array,
             y_gen: Array, *, aux_weight: float | None = None) -> Array:
  """The recipe's objective for any `loss_fn(embeddings, labels) -> scalar`.

  Without `aux_weight` (the default): `loss_fn(z_all, y_all)` on the combined batch. With it
  (`--aux_loss`, weight 1.0 in the code, used only by the SOP triplet recipes of Table 2):
  `loss_fn(z, y) + aux_weight * loss_fn(z_all, y_all)`.

  >>> import jax.numpy as jnp
  >>> z, y = jnp.eye(2), jnp.array([0, 1])
  >>> float(loss(lambda e, l: jnp.float32(e.shape[0]), z, y, z, y, aux_weight=0.5))
  4.0
  """
  z_all, y_all = combine(z, y, z_gen, y_gen)
  total = loss_fn(z_all, y_all)
  if aux_weight is None:
    return total
  return loss_fn(z, y) + aux_weight * total


GENERATIONS = ("on", "off")


@dataclasses.dataclass(frozen=True)
class Settings:
  """DAS settings; the defaults are the authors' argparse defaults (`scripts/parameters.py`),
  `recipe(...)` gives those of a published run.

  Attributes:
    num_scaled_dims: K, dimensions DFS scales per class (`--das_dfs_num_scale`, 4).
    bank_size: Z, differences each class's MTS bank keeps (10).
    num_generated: R, embeddings generated per real one (`--das_num_produce`, 3).
    scale_range: (left, right) of the DFS factors ((0.5, 2.0)).
    shift_scale: the MTS factor (`--das_mts_scale`, 0.01).
    detach: no gradient through the generated embeddings (`--detach`, off).
    normalize: L2-normalise the generated embeddings (on).
    aux_weight: None, or the weight of the combined batch's loss added to the real batch's
      (`--aux_loss`, 1.0 in the SOP triplet recipes).
    generation: "on" (DAS) or "off", the control: R exact copies of each real embedding take
      the place of the generated ones (`copies`, with `detach` as set), so the batch size,
      labels and loss computation are those of "on" and only the generation differs. The
      memory is updated in both (it is recorded but not read with "off"), so the state evolves
      the same way.

  >>> Settings(shift_scale=0.1).num_generated
  3
  >>> Settings(bank_size=0)
  Traceback (most recent call last):
  ...
  ValueError: das bank_size must be a positive int, got 0.
  """

  num_scaled_dims: int = 4
  bank_size: int = 10
  num_generated: int = 3
  scale_range: tuple[float, float] = (0.5, 2.0)
  shift_scale: float = 0.01
  detach: bool = False
  normalize: bool = True
  aux_weight: float | None = None
  generation: str = "on"

  def __post_init__(self):
    for name in ("num_scaled_dims", "bank_size", "num_generated"):
      _checks.positive_int(getattr(self, name), f"das {name}")
    if len(tuple(self.scale_range)) != 2:
      raise ValueError(f"das scale_range must be (left, right), got {self.scale_range!r}.")
    left, right = (float(v) for v in self.scale_range)
    object.__setattr__(self, "scale_range", (left, right))
    if not left <= right:
      raise ValueError(f"das scale_range must have left <= right, got {self.scale_range}.")
    if not self.shift_scale >= 0:
      raise ValueError(f"das shift_scale must be >= 0, got {self.shift_scale}.")
    if self.aux_weight is not None and not self.aux_weight >= 0:
      raise ValueError(f"das aux_weight must be None or >= 0, got {self.aux_weight}.")
    if self.generation not in GENERATIONS:
      raise ValueError(f"das generation must be one of {GENERATIONS}, got "
                       f"{self.generation!r}.")

  def init_kwargs(self) -> dict:
    """Keyword arguments for `init`."""
    return {"num_scaled_dims": self.num_scaled_dims, "bank_size": self.bank_size}

  def generate_kwargs(self) -> dict:
    """Keyword arguments for `generate` (and `apply`)."""
    return {"num_generated": self.num_generated, "scale_range": self.scale_range,
            "shift_scale": self.shift_scale, "detach": self.detach, "normalize": self.normalize}


_FINE = (0.99, 1.01)
_CUB_CARS = Settings(scale_range=_FINE, detach=True)
_TABLE2_LOSSES = ("triplet_semihard", "triplet_distance", "contrastive", "margin", "lifted",
                  "npair", "multisimilarity")

RECIPES = MappingProxyType({
    # table1.sh: multi-similarity, K = 8 (R50 and BN-Inception, 512-d).
    ("table1", "cub200", "multisimilarity"): dataclasses.replace(_CUB_CARS, num_scaled_dims=8),
    ("table1", "cars196", "multisimilarity"): dataclasses.replace(_CUB_CARS, num_scaled_dims=8),
    ("table1", "online_products", "multisimilarity"): Settings(num_scaled_dims=8,
                                                                shift_scale=0.1),
    # table2.sh, CUB and Cars: every loss the same, unnormalised for lifted and N-pair.
    **{("table2", ds, loss): dataclasses.replace(_CUB_CARS,
                                                 normalize=loss not in ("lifted", "npair"))
       for ds in ("cub200", "cars196") for loss in _TABLE2_LOSSES},
    # table2.sh, SOP.
    ("table2", "online_products", "triplet_semihard"): Settings(shift_scale=0.1, detach=True,
                                                                 aux_weight=1.0),
    ("table2", "online_products", "triplet_distance"): Settings(shift_scale=0.1, detach=True,
                                                                 aux_weight=1.0),
    ("table2", "online_products", "contrastive"): Settings(shift_scale=0.1),
    ("table2", "online_products", "margin"): Settings(),
    ("table2", "online_products", "lifted"): Settings(scale_range=_FINE, shift_scale=0.1,
                                                       normalize=False),
    ("table2", "online_products", "npair"): Settings(scale_range=_FINE, shift_scale=0.1,
                                                      normalize=False),
    ("table2", "online_products", "multisimilarity"): Settings(shift_scale=0.1),
})
"""Read-only map `(table, dataset, loss) -> Settings` of the official scripts.

Table 1 (`table1.sh`, MS, K = 8): CUB/Cars scale (0.99, 1.01), shift 0.01, detach; SOP default
scale (0.5, 2.0), shift 0.1, no detach. Table 2 (`table2.sh`, K = 4): CUB/Cars as Table 1 but
K = 4, and without normalisation for lifted and N-pair; SOP: shift 0.1 except margin (all
defaults), fine scale (0.99, 1.01) and no normalisation for lifted and N-pair, detach and the
auxiliary loss (weight 1) only for the two triplet runs. The script's Cars "MS + R^512" line of
Table 1 names `cub200`; its settings are those of the other Cars and CUB lines. Every run uses 2
images per class; the multi-similarity runs use the code's MS loss (alpha 2, beta 40, base 0.5)
with its pair mining (margin 0.1): beta 40, where `objectives.core("multi_similarity")` has
Wang et al.'s 50 (`full_recipe` gives the whole run).
"""


def recipe(table: str, dataset: str, loss: str = "multisimilarity") -> Settings:
  """The DAS settings of a published run, e.g. `recipe("table1", "cub200")`.

  Args:
    table: "table1" or "table2".
    dataset: "cub200", "cars196" or "online_products".
    loss: "multisimilarity" (Table 1's only loss) or, for Table 2, one of "triplet_semihard",
      "triplet_distance", "contrastive", "margin", "lifted", "npair", "multisimilarity".

  >>> recipe("table1", "cub200").num_scaled_dims
  8
  """
  try:
    return RECIPES[(table, dataset, loss)]
  except KeyError:
    raise ValueError(
        f"no DAS recipe for ({table!r}, {dataset!r}, {loss!r}); known: "
        f"{sorted(RECIPES)}.") from None


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A published DAS run as plain values: the objective around DAS and the batches it sees.

  `objectives.core(r.loss, miner=r.miner, miner_kwargs=r.miner_kwargs, **r.loss_kwargs)` is the
  inner objective, `wrap(inner, r.settings, ...)` puts DAS around it, and batches hold
  `r.per_class` images of each class.

  Attributes:
    loss: the core loss (`jaxdml.objectives.names()`).
    loss_kwargs: its keyword arguments.
    miner: the `jaxdml.miners.MINERS` name, or None.
    miner_kwargs: the miner's keyword arguments.
    settings: the DAS `Settings` (`recipe(...)`).
    per_class: images per class in a batch (`--samples_per_class`).
  """

  loss: str
  loss_kwargs: Mapping[str, float]
  miner: str | None
  miner_kwargs: Mapping[str, float]
  settings: Settings
  per_class: int

  def __post_init__(self):
    object.__setattr__(self, "loss_kwargs", MappingProxyType(dict(self.loss_kwargs)))
    object.__setattr__(self, "miner_kwargs", MappingProxyType(dict(self.miner_kwargs)))


#: The multi-similarity loss of the DAS code (`loss/multisimilarity.py` with the defaults of
#: `scripts/parameters.py`: pos weight 2, neg weight 40, thresh 0.5) and its pair mining inside the
#: loss (margin 0.1: a negative is kept if `s_an + 0.1 > min_p s_ap`, a positive if
#: `s_ap - 0.1 < max_n s_an`), which is `jaxdml.miners.multi_similarity_miner` with epsilon 0.1.
DAS_MULTI_SIMILARITY = MappingProxyType({"alpha": 2.0, "beta": 40.0, "base": 0.5})
DAS_MS_MINER = MappingProxyType({"epsilon": 0.1})


def full_recipe(table: str, dataset: str, loss: str = "multisimilarity") -> Recipe:
  """The whole published run of `recipe(table, dataset, loss)`: loss, miner, DAS, batches.

  Every multi-similarity run of `table1.sh` and `table2.sh` uses the code's MS loss (alpha 2,
  beta 40, base 0.5) with its pair mining (margin 0.1) and `--samples_per_class 2`; the DAS
  settings are `recipe(table, dataset, loss)`. The other losses of Table 2 have only their DAS
  settings here (`recipe`).

  Args:
    table: "table1" or "table2".
    dataset: "cub200", "cars196" or "online_products".
    loss: "multisimilarity".

  >>> r = full_recipe("table1", "cub200")
  >>> r.loss, dict(r.loss_kwargs), r.per_class
  ('multi_similarity', {'alpha': 2.0, 'beta': 40.0, 'base': 0.5}, 2)
  >>> r.miner, dict(r.miner_kwargs), r.settings.num_scaled_dims
  ('multi_similarity', {'epsilon': 0.1}, 8)
  """
  settings = recipe(table, dataset, loss)
  if loss != "multisimilarity":
    raise ValueError(f"full_recipe covers the multi-similarity runs (loss='multisimilarity'), "
                     f"got loss={loss!r}; recipe({table!r}, {dataset!r}, {loss!r}) gives its DAS "
                     "settings.")
  return Recipe(loss="multi_similarity", loss_kwargs=DAS_MULTI_SIMILARITY,
                miner="multi_similarity", miner_kwargs=DAS_MS_MINER, settings=settings,
                per_class=2)


# ------------------------------------------------------------------------------------------------
# The objective
# ------------------------------------------------------------------------------------------------


def wrap(inner: Objective, settings: Settings = Settings(), *, num_classes: int, dim: int,
         name: str = "das") -> Objective:
  """DAS around any objective: each step records the batch, generates R embeddings per real one
  and gives `inner` the combined batch `[real; generated]`.

  The memory is the objective's state under `name`; the step's key is split into (inner, own),
  the own key draws the scale factors and bank entries. The inner objective sees a `Batch` of the
  combined embeddings and labels only (no inputs, feature maps or model seam: they belong to the
  real examples), so a Metrix inside DAS can mix embeddings, not images or feature maps; put
  Metrix outside DAS to mix those (the order of the published recipes: DAS, then Metrix). With
  `settings.generation="off"` the generated embeddings are exact copies of the real ones
  (`copies`): the control that keeps everything but DAS's generation. With
  `settings.aux_weight` the inner objective also scores the real batch alone (with the full
  `Batch`): `L(real) + aux_weight * L(real + generated)`, its state taken from the combined call.

  Args:
    inner: the objective DAS feeds (`jaxdml.objectives.Objective`).
    settings: `Settings`.
    num_classes: C, training classes (labels in [0, C)): one memory row each.
    dim: the embedding dimension.
    name: the state key (another name lets DAS wrap DAS).

  Returns:
    The objective; `aux["base_loss"]` is the inner loss on the combined batch. Its `soft` loss
    is the inner one.

  >>> import jax, jax.numpy as jnp
  >>> from jaxdml import objectives
  >>> obj = wrap(objectives.core("contrastive"), Settings(num_generated=2), num_classes=2, dim=4)
  >>> state = obj.init_state()
  >>> z, y = jnp.eye(4), jnp.array([0, 0, 1, 1])
  >>> loss, state, aux = obj.apply({}, state, objectives.Batch(z, y), jax.random.PRNGKey(0))
  >>> state["das"].bank_count.tolist()
  [2, 2]
  """
  if not isinstance(settings, Settings):
    raise TypeError(f"settings must be a das.Settings, got {type(settings).__name__}.")
  _checks.positive_int(num_classes, "das num_classes")
  _checks.positive_int(dim, "das dim")
  if settings.num_scaled_dims > dim:
    raise ValueError(f"das num_scaled_dims ({settings.num_scaled_dims}) must be <= the "
                     f"embedding dimension ({dim}).")

  def init_state():
    state = dict(inner.init_state())
    if name in state:
      raise ValueError(f"the inner objective {inner.name!r} already has state {name!r}; give "
                       "this DAS another name.")
    state[name] = init(num_classes, dim, **settings.init_kwargs())
    return state

  def apply_fn(params, state, batch, key):
    k_inner, k_own = jax.random.split(key)
    z, y = batch.embeddings, batch.labels
    memory = update(state[name], z, y)
    if settings.generation == "on":
      z_gen, y_gen = generate(memory, z, y, k_own, **settings.generate_kwargs())
    else:
      z_gen, y_gen = copies(z, y, settings.num_generated, detach=settings.detach)
    z_all, y_all = combine(z, y, z_gen, y_gen)
    inner_state = {k: v for k, v in state.items() if k != name}
    combined = objectives.Batch(z_all, y_all)
    if settings.aux_weight is None:
      total, inner_state, aux = inner.apply(params, inner_state, combined, k_inner)
    else:
      k_all, k_real = jax.random.split(k_inner)
      total, inner_state, aux = inner.apply(params, inner_state, combined, k_all)
      real, _, _ = inner.apply(params, inner_state, batch, k_real)
      total = real + settings.aux_weight * total
    aux = dict(aux)
    aux.setdefault("base_loss", total)
    return total, {**inner_state, name: memory}, aux

  return objectives.Objective(f"{inner.name}+{name}", inner.init, apply_fn, init_state,
                              soft=inner.soft, lr_mult=inner.lr_mult,
                              weight_decay=inner.weight_decay)


def build(inner: Objective, settings: Settings, setup: objectives.Setup) -> Objective:
  """`wrap` with the run's classes and embedding dimension (how applications build DAS).

  >>> from jaxdml import objectives
  >>> obj = build(objectives.core("contrastive"), Settings(),
  ...             objectives.Setup(num_classes=10, dim=16))
  >>> obj.init_state()["das"].bank.shape
  (10, 10, 16)
  """
  return wrap(inner, settings, num_classes=setup.num_classes, dim=setup.dim)
