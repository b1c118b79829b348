"""Training: the OpenUni-facing datasets, image and caption decoding, tokenizers, collate, samplers and hooks."""
