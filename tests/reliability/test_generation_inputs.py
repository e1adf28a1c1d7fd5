"""Issue 13, item 11: an empty stop string is refused (it is found in every text, so generation
stopped after one token)."""

from __future__ import annotations

import pytest

from headcount.errors import ConfigError
from tests.prune.conftest import tiny_decoder


def test_an_empty_stop_string_is_refused() -> None:
    model = tiny_decoder()
    with pytest.raises(ConfigError, match="stop string must not be empty"):
        model.stream([1, 2, 3], max_new_tokens=4, stop=[""])
    with pytest.raises(ConfigError, match="stop string must not be empty"):
        model.generate([1, 2, 3], max_new_tokens=4, stop="")
    assert len(list(model.stream([1, 2, 3], max_new_tokens=4, stop=[]))) == 4  # still generates
