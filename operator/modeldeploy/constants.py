"""Names shared by the operator, the chart and the tests: one place so they never drift apart."""

from typing import Final

GROUP: Final = "modeldeploy.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "ModelDeployment"
PLURAL: Final = "modeldeployments"
SINGULAR: Final = "modeldeployment"
SHORT_NAME: Final = "md"
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

FIELD_MANAGER: Final = "modeldeploy"

# Labels on everything the operator creates.
LABEL_NAME: Final = f"{GROUP}/name"
LABEL_REVISION: Final = f"{GROUP}/revision"
LABEL_ROLE: Final = f"{GROUP}/role"  # stable | canary
LABEL_APP_NAME: Final = "app.kubernetes.io/name"
LABEL_APP_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_APP_VERSION: Final = "app.kubernetes.io/version"
LABEL_APP_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "modeldeploy"

# Annotations users set to steer a rollout by hand.
ANNOTATION_PROMOTE: Final = f"{GROUP}/promote"
ANNOTATION_PAUSE: Final = f"{GROUP}/pause"
ANNOTATION_ABORT: Final = f"{GROUP}/abort"

# Triton's ports (fixed by the serving image).
PORT_HTTP: Final = 8000
PORT_GRPC: Final = 8001
PORT_METRICS: Final = 8002

GPU_RESOURCE_DEFAULT: Final = "nvidia.com/gpu"


class Phase:
    """status.phase values."""

    PENDING: Final = "Pending"
    LOADING: Final = "Loading"
    READY: Final = "Ready"
    PROGRESSING: Final = "Progressing"
    DEGRADED: Final = "Degraded"
    FAILED: Final = "Failed"


class Condition:
    """status.conditions[].type values."""

    READY: Final = "Ready"
    MODEL_LOADED: Final = "ModelLoaded"
    PROGRESSING: Final = "Progressing"
    DEGRADED: Final = "Degraded"
