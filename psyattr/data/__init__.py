"""Dataset readers, image decoding and splits."""
