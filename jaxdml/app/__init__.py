"""The application: the one place that reads a config and builds objects from it.

  - `config`: the typed, nested schema, dotted overrides and config files;
  - `build`: the model, objective, optimiser and mesh of a config;
  - `digit_pairs`, `image_datasets`: the tasks (data, evaluation protocol, report images);
  - `experiment`: the run that trains, evaluates and reports (`jaxdml train`), and the workdir's
    rules (a run of another config is not resumed);
  - `inference`, `inference_cli`: a trained run loaded for use (`jaxdml.load`, `jaxdml eval`) and
    the `embed` / `index` / `search` commands.
"""

# `inference` registers the run loader that methods read through `Setup.load_run` (AML's teacher)
from jaxdml.app import inference as _inference  # noqa: E402, F401
