"""Datasets and batch samplers."""

from jaxdml.data.digits import DigitPairs, make_digit_pairs
from jaxdml.data.samplers import class_balanced_batches

__all__ = ["DigitPairs", "make_digit_pairs", "class_balanced_batches"]
