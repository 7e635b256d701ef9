"""components/common.py: merging config sections."""

import pytest

from components.common import merge_config


def test_nested_sections_keep_every_part_s_keys():
    merged = merge_config({"a": 1, "features": {"x": True}}, {"features": {"y": True}, "b": [1]}, {"features": {}})
    assert merged == {"a": 1, "features": {"x": True, "y": True}, "b": [1]}


def test_the_same_value_twice_is_fine_and_a_different_one_is_refused():
    assert merge_config({"features": {"x": True}}, {"features": {"x": True}}) == {"features": {"x": True}}
    with pytest.raises(ValueError, match="'x' is set twice, to True and to False"):
        merge_config({"features": {"x": True}}, {"features": {"x": False}})
    with pytest.raises(ValueError, match="'features' is set twice"):
        merge_config({"features": {"x": True}}, {"features": "all"})


def test_the_parts_are_never_changed():
    first, second = {"features": {"x": True}}, {"features": {"y": True}}
    merged = merge_config(first, second)
    merged["features"]["z"] = True
    assert first == {"features": {"x": True}} and second == {"features": {"y": True}}
