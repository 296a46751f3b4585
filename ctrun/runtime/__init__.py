"""Pieces that run inside a starting container: seccomp and friends."""
