"""Every command line reads switches and lists the same way (fire passes strings, lists or literals)."""

from __future__ import annotations

import pytest
from scripts.cli_args import parse_bool, parse_list


@pytest.mark.parametrize(
    "value, expected",
    [
        ("t1,t2, flair", ["t1", "t2", "flair"]),
        ("['configs/a.yaml', 'configs/b.yaml']", ["configs/a.yaml", "configs/b.yaml"]),
        ("[models/model.pt, models/unet.pt]", ["models/model.pt", "models/unet.pt"]),
        (["a", " b ", ""], ["a", "b"]),
        (("x",), ["x"]),
        (None, []),
        ("", []),
    ],
)
def test_lists_in_every_spelling(value, expected):
    assert parse_list(value, "items") == expected


def test_a_non_list_is_refused_with_the_option_name():
    with pytest.raises(KeyError, match="--subjects must be a list"):
        parse_list(3, "subjects", KeyError)


def test_switches():
    assert parse_bool("Yes", "amp") is True and parse_bool("off", "amp") is False and parse_bool(False, "amp") is False
    with pytest.raises(ValueError, match="--amp must be true or false, got 'maybe'"):
        parse_bool("maybe", "amp")
