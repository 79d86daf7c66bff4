"""Kernel compilation for sm_90 on CPU, no GPU needed: registers, spills, occupancy."""
