"""Image recipes and the builders that turn them into container root file systems."""
