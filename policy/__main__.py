"""commstack's policy pack: `pulumi preview --policy-pack policy` (see docs/security.md, "The policy pack").

Every policy is mandatory: a violation stops the preview or update.
"""

from pulumi_policy import EnforcementLevel, PolicyPack

from rules import POLICIES

PolicyPack(
    name="commstack-secure-defaults",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)
