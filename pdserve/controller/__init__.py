"""`pdserve controller`: the ratio controller (ARCHITECTURE §7). It sizes the prefill and decode
Deployments of a Kubernetes install from the routers' measured rates and SLO attainment, with
hysteresis; dry-run (recommend only) unless --apply. `loop.py` holds one tick's order.
"""
