"""Anytime (multi-exit) networks: architectures, data, training, calibration, loading."""
