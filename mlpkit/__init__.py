"""mlpkit: configurable MLP training with gradient diagnostics."""
__version__ = "0.1.0"
