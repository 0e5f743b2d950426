"""Side-by-side speed and memory measurements (make bench)."""
