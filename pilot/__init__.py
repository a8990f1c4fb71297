"""Learning Pilot's control plane: the only package that writes state."""

__version__ = "0.1.0"
