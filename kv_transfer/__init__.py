"""KV-cache page handoff between prefill and decode workers."""
