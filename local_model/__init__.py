"""local_model."""
