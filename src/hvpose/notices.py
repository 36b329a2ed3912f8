"""Third-party log notices that hvpose's own, deliberate use of a library makes routine, hidden where that use happens.

orbax announces at WARNING level what a read-only `CheckpointManager` implies ("read_only=True, setting
create=False", "Given directory is read only"), and TFDS warns that a builder config is custom ("Using custom data
configuration"), which every hvpose conversion is. Printed on every run, they bury the lines that matter. They are
dropped by message prefix, only inside the `with` block around the call that emits them: anything else the library
says there, and everything it says elsewhere, still shows.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

ABSL_LOGGER = "absl"  # orbax and TFDS log through `absl.logging`, i.e. this Python logger


@contextlib.contextmanager
def hidden(*prefixes: str) -> Iterator[None]:
    """Within the block, drops absl log records whose message starts with one of `prefixes`.

    The filter sits on the process-wide absl logger, so other threads' matching records are dropped too while the
    block runs: the same routine notices. The prefixes are matched against the unformatted message (they end before
    any `%s`), which is cheaper and cannot raise inside the library's logging call.
    """

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefixes)

    logger = logging.getLogger(ABSL_LOGGER)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


__all__ = ["hidden"]
