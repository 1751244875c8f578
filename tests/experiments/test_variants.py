"""A preset's recommended configuration: the lowest tuning loss among its variants."""

import math

from experiments.variants import configurations, recommend


def test_the_lowest_finite_tuning_loss_is_recommended():
    assert recommend({"a": 0.3, "b": 0.1, "c": 0.2}) == "b"
    assert recommend({"a": math.inf, "b": math.nan, "c": 5.0}) == "c"


def test_ties_go_to_the_configuration_listed_first():
    assert recommend({"default": 0.1, "other": 0.1}) == "default"
    assert recommend({"other": 0.1, "default": 0.1}) == "other"


def test_every_variant_diverged_recommends_none():
    assert recommend({"a": math.inf, "b": math.inf}) is None
    assert recommend({}) is None


def test_a_name_without_variants_stands_for_itself():
    variants = {"landscape": ["landscape", "landscape_scalar"]}
    assert configurations("landscape", variants) == ["landscape", "landscape_scalar"]
    assert configurations("adam", variants) == ["adam"]
