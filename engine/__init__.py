"""The model engine shared by prefill and decode workers."""
