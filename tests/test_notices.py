"""`hvpose.notices.hidden`: drops absl records by message prefix, only inside its block."""

import logging

import pytest
from absl import logging as absl_logging

from hvpose import notices


def test_only_the_given_prefixes_are_dropped_and_only_inside_the_block(caplog):
    with caplog.at_level(logging.WARNING):
        with notices.hidden("routine notice", "another"):
            absl_logging.warning("routine notice: read_only=True")
            absl_logging.warning("another one")
            absl_logging.warning("a real problem")
            logging.getLogger("hvpose.test").warning("routine notice from hvpose itself")
        absl_logging.warning("routine notice after the block")
    assert [r.getMessage() for r in caplog.records] == [
        "a real problem", "routine notice from hvpose itself", "routine notice after the block"]


def test_the_filter_is_removed_when_the_block_raises(caplog):
    before = list(logging.getLogger(notices.ABSL_LOGGER).filters)
    with pytest.raises(RuntimeError), notices.hidden("routine"):
        raise RuntimeError("inside")
    with caplog.at_level(logging.WARNING):
        absl_logging.warning("routine, but outside")
    assert [r.getMessage() for r in caplog.records] == ["routine, but outside"]
    assert logging.getLogger(notices.ABSL_LOGGER).filters == before


def test_a_prefix_matches_the_message_before_its_arguments(caplog):
    """orbax's notices carry arguments ("Given directory is read only=%s"): the prefix before them decides."""
    with caplog.at_level(logging.WARNING), notices.hidden("Given directory is read only"):
        absl_logging.warning("Given directory is read only=%s", "/some/dir")
        absl_logging.warning("%s", "Given directory is read only, formatted in")  # not a prefix of the format
    assert [r.getMessage() for r in caplog.records] == ["Given directory is read only, formatted in"]
