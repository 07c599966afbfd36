"""ConvNN backends, one package each (numpy oracle, numba, torch, jax), loaded through convnn.get_backend."""
