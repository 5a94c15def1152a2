"""Kubernetes without a cluster: an API server stand-in (apiserver.py) and a kubelet stand-in that runs pods on
the local Docker engine (kubelet.py)."""
