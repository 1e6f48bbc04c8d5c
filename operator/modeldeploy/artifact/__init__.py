"""Content-addressed model artifacts: each revision is built once, stored by key, fetched and verified.

`python -m modeldeploy.artifact build` runs the loader's pipeline once per key and publishes the
Triton model directory with a manifest to an artifact store (S3-compatible bucket or a directory
such as a mounted PVC); `python -m modeldeploy.artifact fetch` is what a serving pod runs: download
by key, check every file against the manifest, commit the repository atomically. docs/artifacts.md
describes the layout, the key and the exit codes.

Nothing here imports kopf or the Kubernetes client, and the fetch path imports neither torch,
onnxruntime nor numpy: serving pods run it in a small image.
"""
