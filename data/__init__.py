"""Data: C4 preparation and reading, the training-window loader, tokenizer, tasks and their encoding."""
