"""Development tools shared by the demo, benchmarks and tests (never shipped in the image)."""
