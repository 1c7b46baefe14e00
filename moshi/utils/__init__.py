"""Small utilities: sampling, CUDA-graph capture of per-step calls, the talk report of a generated reply."""
