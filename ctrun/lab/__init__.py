"""`ctrun lab`: host, container and VM side by side on this machine (see lab.py)."""
