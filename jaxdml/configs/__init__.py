"""The built-in configs, shipped with the package and loaded by name (`jaxdml train --config
digits`, `jaxdml.app.config.load("digits")`) from a checkout or an installed wheel alike.

Each module defining `get_config()` is one config, named by its module: the digit-pairs runs
(`digits`, `digits_contrastive`, `digits_das`, `digits_hier`, `digits_metrix`,
`digits_proxy_anchor`), the glyphs runs (`glyphs`, `glyphs_das`, ...) and the paper recipes
(`ms_resnet50_cub`, `proxy_anchor_bninception_sop`, ...), whose shared values the builders of
`recipes` fill. This package holds the one copy of each; `jaxdml train --list-configs`
(`jaxdml.app.config.available_configs`) lists them with the first line of their docstrings. A
checkout's experiments/ folder holds the configs of one's own runs, loaded by path or, where no
built-in config has the name, by name.

They are configs, not library code: each returns a `jaxdml.app.config.Config`, and nothing in
the library imports them.
"""
