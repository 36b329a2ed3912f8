"""The command-line path of `hvpose.configs.detector_coco` (the config itself lives in the package, so configs import
each other and an installed hvpose has them too). Read and copy that file."""

from hvpose.configs.detector_coco import get_config  # noqa: F401
