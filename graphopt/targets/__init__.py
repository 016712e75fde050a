"""Where graphs run: `reference` (the numpy interpreter) and `tvm` (compiled CPU/CUDA code)."""
