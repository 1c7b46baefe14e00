"""Small utilities: sampling, CUDA-graph capture of per-step calls."""
