"""jaxdml: deep metric learning in JAX.

`jaxdml.load(workdir)` loads a trained run (`jaxdml.app.inference`) and `jaxdml.Index` searches
embeddings (`jaxdml.index`); both are imported on first use, so `import jaxdml` stays cheap.
"""

__version__ = "0.1.0"

_LAZY = ("load", "Run", "Index")


def __getattr__(name):
  if name in ("load", "Run"):
    from jaxdml.app import inference  # noqa: PLC0415 - builds on the whole stack
    return getattr(inference, name)
  if name == "Index":
    from jaxdml.index import Index  # noqa: PLC0415
    return Index
  raise AttributeError(f"module 'jaxdml' has no attribute {name!r}")


def __dir__():
  return sorted([*globals(), *_LAZY])
