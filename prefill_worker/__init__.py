"""Prefill worker: computes a prompt's KV and token #1, then leases the pages to a decoder."""
