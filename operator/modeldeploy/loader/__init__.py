"""The `model-loader` init container: fetch, verify, convert, quantize and write a Triton model repository.

Run as `python -m modeldeploy.loader`; inputs are the MD_* environment variables of
docs/loader-contract.md (flags override them for local runs). This package never imports kopf or
the Kubernetes client: it runs in model namespaces, next to a user's model, with no API access.
"""
