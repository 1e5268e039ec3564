"""esr-eval: re-measure and rank efficient super-resolution submissions (see README)."""

__version__ = "0.1.0"
