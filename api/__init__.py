"""The REST service (FastAPI). Built on bise_core; see SPEC.md section 5 (service issue)."""
