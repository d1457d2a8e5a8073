"""Golden values of the seed methods and their composition.

The values in tests/golden/composition/<case>.npz were recorded by the objectives of the
library before composition became a value (by `jaxdml.train.objectives.make_objective`, which
composed a core loss with DAS, Metrix and HIER in that fixed order from dicts of settings). This
test rebuilds the same objectives as values (`methods.X.wrap` around `objectives.core`, in the
same order) and runs the same train steps through the current API, and checks that losses,
diagnostics, gradients, initial and updated parameters and DAS state are unchanged.

Recording again (only after a deliberate change of what the methods compute, said in the
commit): `JAXDML_WRITE_GOLDEN=1 python -m pytest tests/test_composition_golden.py`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdml import objectives, similarity
from jaxdml.methods import das, hier, metrix
from jaxdml.models import EmbeddingHead
from jaxdml.train.sharding import make_mesh
from jaxdml.train.state import init_state
from jaxdml.train.step import make_train_step

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden" / "composition"
WRITE = os.environ.get("JAXDML_WRITE_GOLDEN") == "1"

NUM_CLASSES, DIM = 4, 16


def _batch():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(12, DIM)).astype(np.float32)
  y = np.repeat(np.arange(NUM_CLASSES), 3).astype(np.int32)
  return jnp.asarray(z), jnp.asarray(y)


# name -> (loss, objective keyword arguments, embeddings: "unit" | "ball")
OBJECTIVES = {
    "ms": ("multi_similarity", {}, "unit"),
    "contrastive_batch_hard": ("contrastive", {"miner": "batch_hard"}, "unit"),
    "triplet_semihard": ("triplet", {"loss_kwargs": {"triplets": "semihard"}}, "unit"),
    "margin_learn_beta": ("margin", {"loss_kwargs": {"learn_beta": True}}, "unit"),
    "proxy_anchor": ("proxy_anchor", {}, "unit"),
    "ms_das_table1": ("multi_similarity", {"das": {"recipe": ["table1", "cub200",
                                                               "multisimilarity"]}}, "unit"),
    "ms_das_defaults": ("multi_similarity", {"das": {}}, "unit"),
    "contrastive_das_aux": ("contrastive", {"das": {"recipe": ["table2", "online_products",
                                                                "triplet_semihard"]}}, "unit"),
    "contrastive_metrix": ("contrastive", {"metrix": {"location": "embedding"}}, "unit"),
    "ms_metrix_pos_neg": ("multi_similarity", {"metrix": {"location": "embedding",
                                                          "pairing": "pos_neg"}}, "unit"),
    "pa_metrix": ("proxy_anchor", {"metrix": {"location": "embedding", "pairing": "pos_neg",
                                              "per_example_lambda": True}}, "unit"),
    "nca_metrix": ("proxy_nca", {"loss_kwargs": {"temperature": 1 / 9},
                                 "metrix": {"location": "embedding"}}, "unit"),
    "pa_hier": ("proxy_anchor", {"hier": {"num_proxies": 8}}, "ball"),
    "pa_das_metrix_hier": ("proxy_anchor", {"das": {"bank_size": 4},
                                            "metrix": {"location": "embedding",
                                                       "pairing": "pos_neg"},
                                            "hier": {"num_proxies": 8}}, "ball"),
}


def build(loss, kwargs):
  """The objective of a case (the API under test): the core loss, then DAS, Metrix and HIER
  around it, as the recorded objectives composed them."""
  obj = objectives.core(loss, num_classes=NUM_CLASSES, dim=DIM, miner=kwargs.get("miner"),
                        **kwargs.get("loss_kwargs", {}))
  if "das" in kwargs:
    settings = dict(kwargs["das"])
    recipe = settings.pop("recipe", None)
    base = das.recipe(*recipe) if recipe else das.Settings()
    obj = das.wrap(obj, dataclasses.replace(base, **settings), num_classes=NUM_CLASSES, dim=DIM)
  if "metrix" in kwargs:
    obj = metrix.wrap(obj, metrix.Settings(**kwargs["metrix"]))
  if "hier" in kwargs:
    obj = hier.wrap(obj, hier.Settings(**kwargs["hier"]), dim=DIM)
  return obj


def apply(obj, params, state, z, y, key):
  return obj.apply(params, state, objectives.Batch(z, y), key)


def _embeddings(kind):
  z, y = _batch()
  z = similarity.l2_normalize(z)
  return (0.3 * z if kind == "ball" else z), y


def _flat(prefix, tree, out):
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p))))
                    for p in path)
    out[f"{prefix}/{name}"] = np.asarray(leaf)


def objective_values(name):
  """Two consecutive applications (the state carried), the gradients of the first."""
  loss_name, kwargs, kind = OBJECTIVES[name]
  obj = build(loss_name, kwargs)
  z, y = _embeddings(kind)
  params = obj.init(jax.random.PRNGKey(0))
  state = obj.init_state()
  out = {}
  _flat("init", params, out)

  def f(p, zz, st, kk):
    loss, new_state, aux = apply(obj, p, st, zz, y, kk)
    return loss, (new_state, aux)

  grad_fn = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))
  for i, key in enumerate((jax.random.PRNGKey(1), jax.random.PRNGKey(2))):
    zi = z if i == 0 else jnp.roll(z, 1, axis=1)
    (loss, (state, aux)), (g_params, g_z) = grad_fn(params, zi, state, key)
    out[f"{i}/loss"] = np.asarray(loss)
    _flat(f"{i}/aux", aux, out)
    _flat(f"{i}/grad_params", g_params, out)
    out[f"{i}/grad_z"] = np.asarray(g_z)
    _flat(f"{i}/state", state, out)
  return out


class Tiny(nn.Module):
  """Dense -> batch norm -> tanh features, dropout -> embedding head: batch-norm state and dropout
  masks are threaded through every forward pass of a step. (tanh, not ReLU: a unit dead for
  every example would make embeddings identical, and the distance losses' gradient at zero
  distance is ill-conditioned.)"""

  hyperbolic: bool = False

  def setup(self):
    self.dense = nn.Dense(8)
    self.bn = nn.BatchNorm(momentum=0.9)
    self.drop = nn.Dropout(0.2)
    if self.hyperbolic:
      self.head = EmbeddingHead(DIM, normalize=False, pre_layer_norm=True,
                                linear_init="orthogonal", poincare_c=0.1, clip_r=2.3)
    else:
      self.head = EmbeddingHead(DIM)

  def features(self, x, *, train=False):
    return jnp.tanh(self.bn(self.dense(x), use_running_average=not train))

  def embed_features(self, f, *, train=False):
    return self.head(self.drop(f, deterministic=not train))

  def __call__(self, x, *, train=False):
    return self.embed_features(self.features(x, train=train), train=train)


# name -> (loss, objective keyword arguments, hyperbolic model)
STEPS = {
    "step_ms": ("multi_similarity", {}, False),
    "step_ms_metrix_feature": ("multi_similarity", {"metrix": {"location": "feature"}}, False),
    "step_pa_metrix_input": ("proxy_anchor", {"metrix": {"location": "input", "num_mixed": 24}},
                             False),
    "step_contrastive_metrix_embedding": ("contrastive", {"metrix": {"location": "embedding"}},
                                          False),
    "step_ms_das": ("multi_similarity", {"das": {"recipe": ["table1", "cub200",
                                                             "multisimilarity"]}}, False),
    "step_all": ("proxy_anchor", {"das": {"bank_size": 4}, "metrix": {"location": "feature"},
                                  "hier": {"num_proxies": 8}}, True),
}


def step_values(name):
  """Three jitted train steps of a small network with batch norm and dropout."""
  loss_name, kwargs, hyperbolic = STEPS[name]
  obj = build(loss_name, kwargs)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(12, 6)).astype(np.float32))
  y = jnp.asarray(np.repeat(np.arange(NUM_CLASSES), 3).astype(np.int32))
  model = Tiny(hyperbolic)
  tx = optax.sgd(0.05)  # plain SGD: Adam would turn float noise in ~0 gradients into O(lr)
  mesh = make_mesh(1)
  state = init_state(jax.random.PRNGKey(3), model, obj, x[:2], tx, mesh)
  step = make_train_step(model, obj, tx, mesh=mesh, donate=False)
  out = {}
  for i in range(3):
    state, metrics = step(state, {"image": jnp.roll(x, i, axis=0), "label": y})
    _flat(f"{i}/metrics", metrics, out)
  _flat("params", state.params, out)
  _flat("model_state", state.model_state, out)
  _flat("loss_state", state.loss_state, out)
  return out


CASES = {**{n: objective_values for n in OBJECTIVES}, **{n: step_values for n in STEPS}}


@pytest.mark.parametrize("case", sorted(CASES))
def test_values_unchanged(case):
  got = CASES[case](case)
  path = GOLDEN / f"{case}.npz"
  if WRITE:  # recording on purpose (see the module docstring)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **got)
  golden = np.load(path)
  expected = {key: golden[key] for key in golden.files}
  assert sorted(got) == sorted(expected)
  for key, value in expected.items():
    if np.issubdtype(value.dtype, np.integer) or value.dtype == bool:
      np.testing.assert_array_equal(got[key], value, err_msg=f"{case}: {key}")
    else:
      np.testing.assert_allclose(got[key], value, rtol=2e-5, atol=2e-6, err_msg=f"{case}: {key}")
