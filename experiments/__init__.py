"""A checkout's experiment configs: each file here defining `get_config()` is a config.

The built-in configs (digit pairs, paper recipes and the recipe builders) live in
jaxdml/configs/, the one copy of each, so that an installed package has them; a file here
named like one of them only imports it, so that `jaxdml train --config experiments/digits.py`
and `jaxdml train --config digits` are the same run. Put your own configs here: they load by
path (`--config experiments/mine.py`) or by name (`--config mine`) when no built-in config has
that name, and can import their neighbours (`from experiments import common`) or the recipe
builders (`from jaxdml.configs import recipes`).
"""
