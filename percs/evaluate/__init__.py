"""Scoring segmentation methods on a benchmark's fixed queries (`percs eval`)."""
