"""Evaluation of trained trunks: nearest-neighbour retrieval, probes, fine-tuning (SPEC 7)."""
