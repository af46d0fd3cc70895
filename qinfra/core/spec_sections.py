"""Stack-file sections that stand apart from the model and its fleets: the Kubernetes route,
the router, and the quality gate's overrides (qinfra:kubernetes, qinfra:router, qinfra:gate)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from qinfra.core.artifact_uri import parse_artifact_uri
from qinfra.core.spec_types import Number, Ratio, Whole
from qinfra.core.spec_types import SpecModel as _Model


class KubernetesSpec(_Model):
    gateway: str = Field("qinfra", description="Gateway API Gateway the stack's HTTPRoute "
                         "attaches to.")
    gateway_namespace: str | None = Field(None, description="The Gateway's namespace; default "
                                          "the stack's (kubernetes:namespace).")
    hostname: str | None = Field(None, description="Hostname the route answers; the stack's "
                                 "`endpoint` output. Default: the Gateway's listeners decide.")
    service_account_role_arn: str | None = Field(None, description="IAM role the engine pods' "
                                                 "ServiceAccount assumes (EKS IRSA) to read the "
                                                 "artifact store.")
    ready_timeout_s: Whole | None = Field(None, ge=10, le=86_400, description="Seconds `up` "
                                          "waits for a Deployment's replicas to become "
                                          "available before it fails the update, naming it. "
                                          "Default: the variant's boot budget (image pull, "
                                          "artifact fetch and verification, engine start) + "
                                          "300; the router's: the provider's 10 minutes.")


# An image reference pinned by its manifest digest (OCI distribution spec, "Pulling manifests").
IMAGE_BY_DIGEST = re.compile(r"[^@\s]+@sha256:[0-9a-f]{64}")
# An HTTP header name is an RFC 9110 token.
_HEADER_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class RouterSpec(_Model):
    """The router in front of the engines (target local): how it keys, splits and mirrors."""

    key_header: str = Field("X-Qinfra-User", description="Request header whose value keeps a "
                            "user in one variant (sticky cohorts); else the OpenAI `user` field, "
                            "the cookie, or a hash of the bearer token.")
    cookie: str = Field("qinfra_user", description="Cookie read as the sticky key when the "
                        "header and the `user` field are absent.")
    salt: str = Field("qinfra", min_length=1, description="Mixed into every key's bucket: "
                      "another salt splits the same users differently.")
    shadow_percent: Number = Field(0.0, ge=0, le=100, description="Share of baseline-assigned "
                                   "requests mirrored to the quantized variant for comparison "
                                   "(the mirror's answer is never returned).")
    max_in_flight: Whole = Field(256, ge=1, le=1_000_000, description="Requests the router "
                                 "serves at once; more get 429 with Retry-After.")
    connect_timeout_s: Number = Field(2.0, gt=0, le=3600, description="Seconds to connect to "
                                      "an engine before trying another replica.")
    read_timeout_s: Number = Field(300.0, gt=0, le=86_400, description="Seconds an engine may "
                                   "stay silent mid-answer before the router answers 504.")
    image: str | None = Field(None, description="target kubernetes: the router's container "
                              "image, pinned by digest (REPOSITORY@sha256:<64 hex>), built from "
                              "the qinfra that renders the stack.")
    artifact: str | None = Field(None, description="target aws: the router's wheels (qinfra and "
                                 "what the router imports), pinned by `qinfra artifacts push "
                                 "--stack` like a model artifact.")

    @field_validator("image")
    @classmethod
    def _by_digest(cls, v: str | None) -> str | None:
        if v is not None and not IMAGE_BY_DIGEST.fullmatch(v):
            raise ValueError("must name an image by digest: REPOSITORY@sha256:<64 hex digits> "
                             "(a tag can move under a running stack)")
        return v

    @field_validator("artifact")
    @classmethod
    def _router_artifact(cls, v: str | None) -> str | None:
        if v is not None:
            parse_artifact_uri(v)
        return v

    @field_validator("key_header", "cookie")
    @classmethod
    def _token(cls, v: str) -> str:
        if not _HEADER_TOKEN.fullmatch(v):
            raise ValueError("must be a header or cookie name: letters, digits and !#$%&'*+.^_`|~-")
        return v

    @field_validator("shadow_percent")
    @classmethod
    def _basis_points(cls, v: float) -> float:
        if abs(v * 100 - round(v * 100)) > 1e-6:
            raise ValueError("must have at most two decimals (the router splits in 1/100 %)")
        return v


class GateBarSpec(_Model):
    """Limits on the gate's metrics (qinfra/quality/data/gate_thresholds.toml has the defaults
    and their sources); unset keeps the default."""

    mean_kld_max: Ratio | None = Field(None, description="Largest mean KL divergence.")
    same_top_min: Ratio | None = Field(None, le=1, description="Smallest share of tokens with "
                                       "the same most likely next token.")
    ppl_ratio_max: Ratio | None = Field(None, description="Largest perplexity ratio.")
    exact_match_min: Ratio | None = Field(None, le=1, description="Online: smallest share of "
                                          "prompts answered identically.")
    prefix_fraction_min: Ratio | None = Field(None, le=1, description="Online: smallest mean "
                                              "common-prefix share of the answers.")


class GateSpec(_Model):
    acceptance: GateBarSpec = Field(default_factory=GateBarSpec, description="The bar every "
                                    "format must clear (how far from the baseline it may drift).")
    family: dict[str, GateBarSpec] = Field(default_factory=dict, description="Per format family "
                                           "(w8, w6, w5, w4, w3, w2): the drift expected of it.")
    skip: str | None = Field(None, description="The quantized artifact URI that may take "
                             "traffic without a passing gate report; written by --skip-gate and "
                             "so recorded in every update's history.")

    def thresholds(self) -> dict[str, Any]:
        """The overrides as the thresholds table takes them (unset limits left out)."""
        return {"acceptance": self.acceptance.model_dump(exclude_none=True),
                "family": {k: v.model_dump(exclude_none=True) for k, v in self.family.items()}}
