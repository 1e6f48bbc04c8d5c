"""modeldeploy: a Kubernetes operator that serves ML models with NVIDIA Triton."""

__version__ = "0.1.0"
