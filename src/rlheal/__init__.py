"""rlheal: run and explain SFT-then-RL post-training (arXiv 2509.12235) on any causal language model."""

__version__ = "0.1.0"
