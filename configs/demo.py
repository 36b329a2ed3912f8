"""The command-line path of `hvpose.configs.demo` (the config itself lives in the package, so configs import each
other and an installed hvpose has them too). Read and copy that file: `python -c "import hvpose.configs.demo as c; print(c.__file__)"`."""

from hvpose.configs.demo import get_config  # noqa: F401
