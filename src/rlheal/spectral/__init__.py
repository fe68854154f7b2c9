"""spectral room."""
