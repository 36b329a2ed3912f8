"""hvpose's error classes, in one place. Each message is one line naming the file or config field and the problem;
`hvpose.main` and `hvpose.predict` print it as `hvpose: error: MESSAGE` instead of a traceback."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


class DataError(ValueError):
    """Bad input data; the message names the file and the problem."""


class ImageError(DataError):
    """An image that cannot be used: unreadable, corrupt, or larger than the pixel limit."""


class WeightFileError(ValueError):
    """A weight file is missing, unreadable, or does not match the model it is loaded into."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss."""


# What the command-line entry points report in one line (everything the library raises on bad input).
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError, WeightFileError, NonFiniteLossError)



def configured[T](build: Callable[..., T], section: Mapping[str, Any], name: str, **extra: Any) -> T:
    """`build(**section, **extra)`: a config section passed straight to what it configures, with an unknown
    field or a bad value reported as one ConfigError line naming `config.NAME`."""
    try:
        return build(**section, **extra)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config.{name}: {error}") from None


__all__ = ["ConfigError", "DataError", "ImageError", "NonFiniteLossError", "USER_ERRORS", "WeightFileError",
           "configured"]
