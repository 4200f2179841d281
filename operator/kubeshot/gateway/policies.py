"""The ScreenshotPolicies of the local backend, loaded from YAML files (`--policy FILE`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kubeshot.api import CaptureError, FailureReason, ScreenshotPolicy, ScreenshotPolicySpec
from kubeshot.api.policy import load_policy_file
from kubeshot.kube.names import DEFAULT_POLICY


class PolicySet:
    """Policies by name. Without a policy named `default`, a built-in secure default applies."""

    def __init__(self, policies: Iterable[ScreenshotPolicy], *, ignore_https_errors: bool = False):
        self._policies: dict[str, ScreenshotPolicy] = {}
        for policy in policies:
            if policy.name in self._policies:
                raise ValueError(f"policy {policy.name!r} is defined twice")
            self._policies[policy.name] = policy
        if DEFAULT_POLICY not in self._policies:
            spec = ScreenshotPolicySpec.model_validate(
                {"network": {"ignoreHTTPSErrors": ignore_https_errors}}
            )
            self._policies[DEFAULT_POLICY] = ScreenshotPolicy(spec=spec)

    @classmethod
    def from_files(cls, paths: Iterable[Path], *, ignore_https_errors: bool = False) -> PolicySet:
        policies: list[ScreenshotPolicy] = []
        for path in paths:
            policies.extend(load_policy_file(path))
        return cls(policies, ignore_https_errors=ignore_https_errors)

    @property
    def names(self) -> list[str]:
        return sorted(self._policies)

    def get(self, name: str | None) -> ScreenshotPolicy:
        """The named policy (`default` when None); CaptureError(PolicyNotFound) when unknown."""
        policy = self._policies.get(name or DEFAULT_POLICY)
        if policy is None:
            raise CaptureError(
                FailureReason.POLICY_NOT_FOUND, f"no ScreenshotPolicy named {name!r}"
            )
        return policy
