"""Pure builders of the Kubernetes objects a ModelDeployment owns (plain dicts for server-side apply).

No kopf, no Kubernetes client: same inputs, same dict, so a pass with nothing to change writes
nothing and every builder is tested without a cluster.
"""

from .deployment import Images, build_deployment, image_inputs
from .pdb import build_pdb
from .services import build_services

__all__ = ["Images", "build_deployment", "build_pdb", "build_services", "image_inputs"]
