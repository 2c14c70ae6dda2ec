"""Hugging Face checkpoints and tokenizers in and out: names, shapes and configs mapped between
the transformers layout and our parameter pytree. Never trains anything."""
