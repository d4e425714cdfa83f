"""Pure tensor functions used by tokenizers, position embeddings and weight import."""
