"""The runc-compatible OCI runtime front end (ctrun-oci)."""
