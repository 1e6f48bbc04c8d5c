"""The activator: holds requests for models scaled to zero, signals demand, forwards once a pod is Ready.

Runs as `python -m modeldeploy.activator` (the operator's image; a Deployment of the chart in the
operator's namespace). docs/design.md, "Scale to zero: the activator".
"""
