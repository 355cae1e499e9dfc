"""Data: decoding, curation, buckets, datasets and caches."""
