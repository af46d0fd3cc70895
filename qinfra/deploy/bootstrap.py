"""A first `qinfra up` on an empty account: the artifact bucket is created by a Pulumi pass of its
own before anything is pushed into it, then the whole stack is deployed.

The program cannot run whole before the push (its render needs the pinned artifacts), so the
first pass runs it with STORE_PASS_ENV set: it registers the bucket and nothing else. That pass
runs only for a stack the backend does not hold yet, where a program of one bucket deletes
nothing; on a deployed stack the bucket is already in its state.
"""

from __future__ import annotations

from qinfra.core.spec import StackSpec
from qinfra.planning.targets import target_plan

# Set for the program by the first pass: register the artifact bucket only.
STORE_PASS_ENV = "QINFRA_STORE_PASS"


def store_pass_needed(spec: StackSpec, deployed: bool) -> bool:
    """True when `up` must create the artifact bucket before it pushes: target aws with
    create_bucket, an s3:// store whose bucket is missing, and a stack not deployed yet.
    ArtifactError when the store cannot be asked (no credentials, no access)."""
    if not target_plan(spec.target).creates_store_bucket or not spec.artifacts.create_bucket or deployed:
        return False
    if not spec.artifacts.store.startswith("s3://"):
        return False
    from qinfra.artifacts.s3store import S3Store
    from qinfra.artifacts.stores import TransferSettings

    return not S3Store(spec.artifacts.store, TransferSettings()).bucket_exists()


def create_store(spec: StackSpec) -> None:
    """The first pass: a Pulumi update of the bucket alone (its versioning, encryption and
    public-access block with it), so the push that follows has somewhere to go."""
    from qinfra.deploy.engine import Deployer

    Deployer(spec.name, backend=spec.backend, env={STORE_PASS_ENV: "1"}).up(refresh=False)
