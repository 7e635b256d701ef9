"""tests/values.py: the wrong value of a negative test is never the right one."""

import string

import pytest

from tests.values import different


@pytest.mark.parametrize("last", list(string.ascii_letters + string.digits + "-_"))
def test_every_last_character_gets_a_different_one_of_its_class(last):
    value = "abc" + last
    changed = different(value)
    assert changed != value and len(changed) == len(value) and changed[:-1] == value[:-1]
    assert changed[-1].isalnum() and changed[-1].isdigit() == last.isdigit()
    if last.isalpha():
        assert changed[-1].isupper() == last.isupper()


def test_the_edit_that_made_the_bridge_test_flaky_is_gone():
    token = "A" * 63 + "x"
    assert token[:-1] + "x" == token  # the old way: the "wrong" token was the right one
    assert different(token) != token


def test_an_empty_value_is_refused():
    with pytest.raises(ValueError):
        different("")
