"""Captioned image data: ShapesWorld, folders, datasets, shards, safe decoding, caches."""
