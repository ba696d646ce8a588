"""Evaluation of trained trunks: nearest-neighbour retrieval, probes, fine-tuning (design §7)."""
