"""The output-length predictor: fallback, conditional quantiles, max_tokens cap, sliding window."""

from __future__ import annotations

import pytest

from ecoserve.brain.predictor import FixedPredictor, QuantilePredictor


def test_fixed_predictor_is_capped_by_max_tokens():
    assert FixedPredictor(300).predict(10, None) == 300
    assert FixedPredictor(300).predict(10, 64) == 64


def test_quantile_predictor_falls_back_until_enough_samples():
    p = QuantilePredictor(q=0.5, min_samples=4, fallback=FixedPredictor(7))
    for out in (10, 20, 30):
        p.observe(100, None, out)
    assert p.predict(100, None) == 7
    p.observe(100, None, 40)
    assert p.predict(100, None) == 30  # upper median of 10,20,30,40


def test_prediction_is_conditioned_on_prompt_length_bucket():
    p = QuantilePredictor(q=0.5, min_samples=2)
    for _ in range(5):
        p.observe(20, None, 500)  # short prompts, long answers
        p.observe(3000, None, 30)  # long prompts, short answers
    assert p.predict(25, None) == 500
    assert p.predict(2500, None) == 30
    assert p.predict(300, None) in (30, 500)  # unseen bucket: the global window


def test_prediction_is_conditioned_on_max_tokens_and_capped_by_it():
    p = QuantilePredictor(q=0.5, min_samples=2)
    for _ in range(4):
        p.observe(100, 16, 16)
        p.observe(100, None, 900)
    assert p.predict(100, 16) == 16
    assert p.predict(100, 1000) >= 16  # no samples for this max_tokens bucket: the prompt bucket's
    assert p.predict(100, 100) <= 100


def test_window_forgets_old_observations():
    p = QuantilePredictor(q=0.5, window=4, min_samples=4)
    for out in (1000, 1000, 1000, 1000, 5, 5, 5, 5):
        p.observe(64, None, out)
    assert p.predict(64, None) == 5


def test_bad_settings_and_observations_are_refused():
    with pytest.raises(ValueError):
        QuantilePredictor(q=1.5)
    with pytest.raises(ValueError):
        QuantilePredictor().observe(1, None, -1)
