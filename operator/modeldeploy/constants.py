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
# On a build Job's pod only: the ModelDeployment it builds for (never LABEL_NAME, which Services and
# the PDB select on), so that the `<name>-build` NetworkPolicy selects exactly its build pods.
LABEL_BUILD_OF: Final = f"{GROUP}/build-of"
# On a build Job only: the artifact key the operator computed for it (planning/reuse.py), so that a
# pass about to start another build of that key finds this one and waits for its record instead.
LABEL_ARTIFACT_KEY: Final = f"{GROUP}/artifact-key"
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
    SCALED_TO_ZERO: Final = "ScaledToZero"  # idle, 0 pods; the activator answers (autoscaling.minReplicas 0)


class Condition:
    """status.conditions[].type values."""

    READY: Final = "Ready"
    MODEL_LOADED: Final = "ModelLoaded"
    PROGRESSING: Final = "Progressing"
    DEGRADED: Final = "Degraded"


# Roles of a revision (LABEL_ROLE, on Deployments and the -stable/-canary Services, never on pods:
# promoting a canary must not change its pod template).
ROLE_STABLE: Final = "stable"
ROLE_CANARY: Final = "canary"
COMPONENT_SERVER: Final = "inference-server"  # app.kubernetes.io/component
COMPONENT_BUILD: Final = "model-build"  # app.kubernetes.io/component of a build Job and its pod

# Serving pods: container names, volumes and paths shared by the builder, the loader and planning.
CONTAINER_LOADER: Final = "model-loader"
CONTAINER_SERVING: Final = "triton"
MODEL_REPOSITORY_PATH: Final = "/models"  # emptyDir: the loader writes it, Triton reads it
SOURCE_MOUNT_PATH: Final = "/source"  # a pvc:// source's claim, mounted read-only into the loader
PORT_NAME_HTTP: Final = "http"
PORT_NAME_GRPC: Final = "grpc"
PORT_NAME_METRICS: Final = "metrics"
