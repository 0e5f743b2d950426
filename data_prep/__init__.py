"""Dataset preparation: official downloads and annotations -> the index contract of the data pipeline."""
