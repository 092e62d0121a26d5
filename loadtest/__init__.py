"""`pdserve loadtest`: seeded workloads sent over the public API, and their figures
(TTFT, TPOT, ITL, e2e, tokens/s, goodput at an SLO). No torch, no Ray."""
