"""The deployment targets that ship with edgetl, installed as ``edgetl._targets``: one TOML
file per target (see edgetl/targets.py). This file only makes the folder a package, so
that editable installs find it too."""
