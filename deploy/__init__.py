"""Deployment: container images, Kubernetes manifests, the model check entrypoint and the local topology."""
