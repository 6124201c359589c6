"""Models: the store, where they come from, and what a GGUF file says of itself."""
