"""Celery workers that run BISE jobs. See SPEC.md section 6 (service issue)."""
