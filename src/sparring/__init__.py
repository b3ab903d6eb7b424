"""sparring: self-play preference optimization for language models."""

__version__ = "0.1.0"
