"""The artifact store as pods see it: its URI, its credentials by reference, its volume (pure).

The build Job writes artifacts there and serving pods fetch from it (docs/artifacts.md). An
`s3://` store: the operator only names the store's Secret; pods receive its keys through
secretKeyRef as the artifact commands' MD_STORE_AWS_* variables (kept apart from the model
source's AWS_*, which a build Job holds too), so the operator never reads a credential. A
`pvc://CLAIM` store: a PersistentVolumeClaim of that name in the model's namespace, mounted
read-write in the build Job and read-only in serving pods, seen by the commands as a directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

STORE_ENV: Final = "MD_ARTIFACT_STORE"  # modeldeploy.artifact.store.STORE_ENV (the CLI's contract)
STORE_ENV_PREFIX: Final = "MD_STORE_"  # MD_STORE_AWS_ACCESS_KEY_ID <- the Secret's AWS_ACCESS_KEY_ID
ENDPOINT_KEY: Final = "AWS_ENDPOINT_URL"
# Keys of the store's Secret handed to pods (each optional in the Secret, as for credentialsSecret).
SECRET_KEYS: Final = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", ENDPOINT_KEY, "AWS_REGION")
PVC_SCHEME: Final = "pvc://"
VOLUME_STORE: Final = "artifact-store"
STORE_MOUNT_PATH: Final = "/artifact-store"


@dataclass(frozen=True)
class ArtifactStoreRef:
    """Where artifacts live (the operator's MD_ARTIFACT_STORE*): a URI, a Secret's name, an endpoint."""

    uri: str
    secret: str = ""  # a Secret of this name in the model's namespace; "" = anonymous access
    endpoint: str = ""  # set: wins over the Secret's AWS_ENDPOINT_URL

    @property
    def claim(self) -> str:
        """The PersistentVolumeClaim of a `pvc://CLAIM` store; "" for an S3 store."""
        return self.uri.removeprefix(PVC_SCHEME) if self.uri.startswith(PVC_SCHEME) else ""


def store_env(store: ArtifactStoreRef) -> list[dict[str, Any]]:
    """MD_ARTIFACT_STORE and the store's MD_STORE_AWS_* (secrets by reference only, never by value)."""
    if store.claim:  # the mounted claim, as the commands' directory store; no credentials
        return [{"name": STORE_ENV, "value": f"file://{STORE_MOUNT_PATH}"}]
    env: list[dict[str, Any]] = [{"name": STORE_ENV, "value": store.uri}]
    if store.endpoint:
        env.append({"name": STORE_ENV_PREFIX + ENDPOINT_KEY, "value": store.endpoint})
    if store.secret:
        env += [
            {"name": STORE_ENV_PREFIX + key,
             "valueFrom": {"secretKeyRef": {"name": store.secret, "key": key, "optional": True}}}
            for key in SECRET_KEYS if not (key == ENDPOINT_KEY and store.endpoint)
        ]
    return env


def store_volumes(store: ArtifactStoreRef, *, read_only: bool) -> list[dict[str, Any]]:
    """The claim of a `pvc://` store as a pod volume (none for S3): read-only in serving pods."""
    if not store.claim:
        return []
    return [{"name": VOLUME_STORE, "persistentVolumeClaim": {"claimName": store.claim, "readOnly": read_only}}]


def store_mounts(store: ArtifactStoreRef, *, read_only: bool) -> list[dict[str, Any]]:
    """Where a `pvc://` store is mounted in the build or fetch container (nothing for S3)."""
    if not store.claim:
        return []
    return [{"name": VOLUME_STORE, "mountPath": STORE_MOUNT_PATH, "readOnly": read_only}]
