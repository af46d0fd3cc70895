"""Tests against a real local Kubernetes control plane (scripts/kube-local.sh, kwok nodes)."""
