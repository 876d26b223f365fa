"""llmpipe: a language model from raw text to an aligned chat model, in chained stages."""

__version__ = "0.1.0"
