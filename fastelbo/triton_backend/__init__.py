"""Launchers of the Triton kernels (shapes, dtypes, grids). Importing this needs triton."""
