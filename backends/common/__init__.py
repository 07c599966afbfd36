"""Code two backends share (NumPy-like layer ops for numpy and numba), so no backend imports another."""
