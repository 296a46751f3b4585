"""ctrun: OpenVZ-style system containers (and VMs) on one Linux host."""

__version__ = "0.1.0"
