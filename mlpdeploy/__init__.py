"""mlpdeploy: a deployment compiler for PyTorch models whose weight and time sit in MLP blocks."""

__version__ = "0.1.0"
