"""qinfra's policy rules as plain functions of (resource type, properties), so they are tested
without an engine and read the same in the pack: each returns the violations it finds, one line
each, saying what is wrong and how to fix it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

EVIDENCE = "qinfra:quality:GateEvidence"  # registered by the program (qinfra/deploy/program.py)
BUCKETS = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
ENCRYPTION = ("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
              "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2")
BUCKET_ACLS = ("aws:s3/bucketAcl:BucketAcl", "aws:s3/bucketAclV2:BucketAclV2")
IAM_POLICIES = ("aws:iam/rolePolicy:RolePolicy", "aws:iam/policy:Policy")
SSM_PARAMETER = "aws:ssm/parameter:Parameter"
BLOCK_FLAGS = ("block_public_acls", "block_public_policy", "ignore_public_acls",
               "restrict_public_buckets")
PUBLIC_ACLS = ("public-read", "public-read-write", "authenticated-read")
# A name that says it holds a secret (an SSM parameter's last path segment)
_SECRET_NAME = re.compile(r"(?i)(secret|password|passphrase|token|api.?key|private.?key)")


def _prop(props: Mapping[str, Any], name: str) -> Any:
    """A property by its SDK (snake_case) name or as the engine hands it to a pack (camelCase)."""
    head, *rest = name.split("_")
    return props.get(name, props.get(head + "".join(w.title() for w in rest)))


@dataclass(frozen=True)
class Seen:
    """One resource of the stack as a stack rule sees it."""

    type: str
    name: str
    props: Mapping[str, Any]


@dataclass(frozen=True)
class ResourceRule:
    name: str
    description: str
    check: Callable[[str, Mapping[str, Any]], list[str]]


@dataclass(frozen=True)
class StackRule:
    name: str
    description: str
    check: Callable[[Sequence[Seen]], list[str]]


def quality_gate(kind: str, props: Mapping[str, Any]) -> list[str]:
    """No traffic to the quantized variant without a passing gate report for its artifacts."""
    if kind != EVIDENCE:
        return []
    gate = props.get("gate") or {}
    if gate.get("quantized_percent", 0) > 0 and gate.get("problem") and not gate.get("skipped"):
        return [str(gate["problem"])]
    return []


def no_plaintext_secrets(kind: str, props: Mapping[str, Any]) -> list[str]:
    """Config that names a secret holds it encrypted; SSM parameters named for one are SecureString."""
    found = []
    if kind == EVIDENCE:
        for key in props.get("plaintext_secret_keys") or []:
            found.append(f"config key {key} holds a secret in plain text. To fix: "
                         f"pulumi config set --secret {key} <value>")
    named_secret = _SECRET_NAME.search(str(props.get("name", "")).rpartition("/")[2])
    if kind == SSM_PARAMETER and named_secret and props.get("type") not in (None, "SecureString"):
        found.append(f"SSM parameter {props.get('name')} is {props.get('type')}, not SecureString. "
                     "To fix: store secrets as SecureString")
    return found


def bucket_not_public(kind: str, props: Mapping[str, Any]) -> list[str]:
    """Every public access block blocks everything; no bucket ACL grants public reads."""
    if kind == PUBLIC_ACCESS_BLOCK:
        off = [flag for flag in BLOCK_FLAGS if _prop(props, flag) is not True]
        if off:
            return [f"bucket public access block leaves {', '.join(off)} off. To fix: set all "
                    f"four ({', '.join(BLOCK_FLAGS)}) to true"]
    if kind in BUCKET_ACLS and props.get("acl") in PUBLIC_ACLS:
        return [f"bucket ACL {props.get('acl')} makes artifacts public. To fix: use acl private"]
    return []


def _statements(document: Any) -> list[Mapping[str, Any]]:
    doc = json.loads(document) if isinstance(document, str) else document
    statements = (doc or {}).get("Statement") or []
    return [statements] if isinstance(statements, Mapping) else list(statements)


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value or []]


def iam_scoped(kind: str, props: Mapping[str, Any], store: str | None = None) -> list[str]:
    """IAM policies grant S3 only on the artifact store's bucket and prefix, never `*`."""
    if kind not in IAM_POLICIES or not isinstance(props.get("policy"), str | Mapping):
        return []
    allowed = _store_arns(store) if store else None
    found = []
    for st in _statements(props["policy"]):
        if st.get("Effect") != "Allow":
            continue
        actions, resources = _as_list(st.get("Action")), _as_list(st.get("Resource"))
        if "*" in actions or "s3:*" in actions:
            found.append(f"statement {st.get('Sid', '?')} allows {actions}. To fix: name the "
                         "actions the engines need (s3:GetObject, s3:ListBucket)")
        if not any(a.startswith("s3:") or a == "*" for a in actions):
            continue
        wide = [r for r in resources if r in ("*", "arn:aws:s3:::*")
                or (allowed is not None and r != allowed[1] and not r.startswith(allowed[0]))]
        if wide:
            found.append(f"statement {st.get('Sid', '?')} grants S3 on {wide}, beyond the "
                         f"artifact store{f' {store}' if store else ''}. To fix: scope it to "
                         "the store's bucket and prefix")
    return found


def _store_arns(store: str) -> tuple[str, str]:
    """(prefix of the objects under `s3://bucket/prefix`, the bucket's own ARN, which ListBucket
    names exactly and a prefix condition narrows)."""
    bucket, _, prefix = store.removeprefix("s3://").partition("/")
    objects = f"arn:aws:s3:::{bucket}/{prefix + '/' if prefix else ''}"
    return (objects, f"arn:aws:s3:::{bucket}")


def buckets_private_and_encrypted(resources: Sequence[Seen]) -> list[str]:
    """Each bucket has a public access block and a default encryption of its own name (the
    aws target names the three alike) and IAM stays within the stack's artifact store."""
    names = {kind: {r.name for r in resources if r.type in kinds}
             for kind, kinds in (("block", (PUBLIC_ACCESS_BLOCK,)), ("sse", ENCRYPTION))}
    found = []
    for bucket in (r for r in resources if r.type in BUCKETS):
        if bucket.name not in names["block"]:
            found.append(f"bucket {bucket.name} has no public access block. To fix: add "
                         "aws.s3.BucketPublicAccessBlock with all four flags true")
        if bucket.name not in names["sse"]:
            found.append(f"bucket {bucket.name} has no default encryption. To fix: add "
                         "aws.s3.BucketServerSideEncryptionConfiguration")
    store = next((str(r.props.get("artifact_store")) for r in resources
                  if r.type == EVIDENCE and str(r.props.get("artifact_store", "")).startswith("s3://")),
                 None)
    for r in resources:
        found += iam_scoped(r.type, r.props, store)
    return found


RESOURCE_RULES: tuple[ResourceRule, ...] = (
    ResourceRule("qinfra-quality-gate", "The quantized variant gets traffic only with a passing "
                 "gate report for the pinned artifacts (qinfra gate).", quality_gate),
    ResourceRule("no-plaintext-secrets", "Secrets stay encrypted in config and in SSM.",
                 no_plaintext_secrets),
    ResourceRule("artifact-bucket-not-public", "The artifact bucket blocks every kind of public "
                 "access.", bucket_not_public),
)
STACK_RULES: tuple[StackRule, ...] = (
    StackRule("artifact-bucket-private-encrypted-iam-scoped", "Every bucket is private and "
              "encrypted; IAM reaches only the artifact prefix.", buckets_private_and_encrypted),
)


def violations(resources: Iterable[Seen]) -> list[str]:
    """Every rule over a whole stack, as the pack would report them (for tests and tools)."""
    seen = list(resources)
    found = [m for r in seen for rule in RESOURCE_RULES for m in rule.check(r.type, r.props)]
    return found + [m for rule in STACK_RULES for m in rule.check(seen)]
