"""Properties of the assignment rule (hypothesis): determinism, monotonic cohorts, realised share."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from qinfra.core.spec import Variant
from qinfra.serving.router.assign import BUCKETS, Cohort, assign, bucket_of, threshold, variant_of

keys = st.text(min_size=1, max_size=64)
salts = st.text(max_size=16)
percents = st.integers(min_value=0, max_value=10_000).map(lambda bp: bp / 100)


@given(key=keys, salt=salts, percent=percents)
def test_a_key_keeps_its_variant_while_the_weight_stays(key, salt, percent):
    first = assign(key, percent, salt, random.Random(1))
    again = assign(key, percent, salt, random.Random(2))  # the rng plays no part for a key
    assert first == again
    assert first.cohort is Cohort.STICKY and 0 <= first.bucket < BUCKETS


@given(key=keys, salt=salts, low=percents, high=percents)
def test_raising_the_weight_only_moves_keys_to_quantized(key, salt, low, high):
    low, high = min(low, high), max(low, high)
    b = bucket_of(salt, key)
    if variant_of(b, low) is Variant.QUANTIZED:
        assert variant_of(b, high) is Variant.QUANTIZED


@given(salt=salts, ids=st.lists(keys, min_size=50, max_size=200, unique=True))
def test_25_50_25_moves_only_the_added_cohort_and_brings_it_back(salt, ids):
    at = {p: {k: assign(k, p, salt, random.Random(0)).variant for k in ids} for p in (25, 50)}
    for k in ids:
        if at[25][k] is Variant.QUANTIZED:
            assert at[50][k] is Variant.QUANTIZED  # nobody leaves the canary when it grows
    back = {k: assign(k, 25, salt, random.Random(0)).variant for k in ids}
    assert back == at[25]  # lowering it again restores the very same cohorts


@given(key=keys, salt=salts)
def test_zero_sends_everyone_to_the_baseline_and_100_everyone_to_quantized(key, salt):
    assert assign(key, 0, salt, random.Random(0)).variant is Variant.BASELINE
    assert assign(key, 100, salt, random.Random(0)).variant is Variant.QUANTIZED


@settings(max_examples=25, deadline=None)
@given(salt=salts, percent=st.integers(min_value=0, max_value=100))
def test_the_realised_share_over_many_keys_is_the_weight(salt, percent):
    # 20,000 keys: the binomial spread is at most 0.35 points, so 2 points is a 5.7-sigma bound
    # that holds for any salt (the 2,000-key figure is checked on the live router).
    n = 20_000
    quantized = sum(assign(f"user-{i}", percent, salt, random.Random(0)).variant is Variant.QUANTIZED
                    for i in range(n))
    assert abs(100 * quantized / n - percent) <= 2


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(), percent=st.integers(min_value=0, max_value=100))
def test_requests_without_a_key_are_random_by_weight(seed, percent):
    rng = random.Random(seed)
    picks = [assign(None, percent, "s", rng) for _ in range(20_000)]
    assert {p.cohort for p in picks} == {Cohort.RANDOM}
    share = 100 * sum(p.variant is Variant.QUANTIZED for p in picks) / len(picks)
    assert abs(share - percent) <= 2


@given(percent=percents)
def test_threshold_is_percent_in_basis_points(percent):
    assert threshold(percent) == round(percent * 100)
    assert variant_of(threshold(percent), percent) is Variant.BASELINE  # the edge bucket stays


def test_the_salt_separates_routers():
    ids = [f"u{i}" for i in range(1000)]
    a = [variant_of(bucket_of("a", k), 50) for k in ids]
    b = [variant_of(bucket_of("b", k), 50) for k in ids]
    assert 300 < sum(x is not y for x, y in zip(a, b, strict=True)) < 700
