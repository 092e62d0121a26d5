"""Decode worker: pulls a prompt's KV from a prefill worker and generates the rest."""
