"""qinfra's Pulumi policy pack: the quality gate and the AWS target's security rules, mandatory.

The rules themselves are plain functions in qinfra_rules.py (tested without a Pulumi engine);
this file only registers them with pulumi-policy.
"""

from __future__ import annotations

import qinfra_rules as rules
from pulumi_policy import (
    EnforcementLevel,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)


def _resource(rule: rules.ResourceRule) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        for message in rule.check(args.resource_type, dict(args.props)):
            report(message)

    return ResourceValidationPolicy(name=rule.name, description=rule.description, validate=validate)


def _stack(rule: rules.StackRule) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report: ReportViolation) -> None:
        resources = [rules.Seen(r.resource_type, r.name, dict(r.props)) for r in args.resources]
        for message in rule.check(resources):
            report(message)

    return StackValidationPolicy(name=rule.name, description=rule.description, validate=validate)


PolicyPack(
    name="qinfra",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[*(_resource(r) for r in rules.RESOURCE_RULES), *(_stack(r) for r in rules.STACK_RULES)],
)
