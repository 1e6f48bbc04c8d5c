"""The node cache agent: serves verified model artifacts to the serving pods on its node.

One agent runs per node (a DaemonSet in the operator's namespace, where a hostPath is allowed; the
model namespaces stay Pod Security `restricted`). It answers the HTTP contract that
`python -m modeldeploy.artifact fetch --cache-url` reads (artifact/cache.py), from a directory on
the node: a hit costs the store nothing, a miss fills the whole artifact from the store once (every
file checked against the manifest before anything is served), and least-recently-used artifacts
are evicted to stay within a byte budget. docs/artifacts.md, "The node cache agent".

Nothing here imports kopf, the Kubernetes client, torch, onnxruntime or numpy: it runs in the
operator's image with none of them loaded (an import-linter contract).
"""
