"""The pack builder: lock -> environment -> reproducible, verified, split zstd artifact + manifest."""
