"""rtsent: GPT-2 as a causal-LM sentiment classifier for Rotten Tomatoes reviews."""

__version__ = "0.1.0"
