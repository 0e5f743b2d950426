"""Training studies (ablations, fine-tuning, stem comparison) that write sections of BENCHMARKS.md."""
