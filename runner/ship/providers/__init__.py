"""GPU cloud providers for `tunebook launch`: a small client per provider over its public REST API.

Every provider maps its own states onto four: `starting`, `running`, `stopped` (the machine is gone or its
container exited: nothing will run any more) and `unknown`. API keys come from the environment only and are
never printed or put in an error message; test servers are reached through TUNEBOOK_<PROVIDER>_URL.
"""
from __future__ import annotations

from runner.errors import TunebookError
from runner.ship.providers.base import (STATES, AuthError, Instance, LaunchSpec, NoCapacity, NotFound, Provider,
                                        ProviderError, ProviderTimeout, api_key, launch_table)
from runner.ship.providers.lambda_cloud import LambdaCloud
from runner.ship.providers.runpod import RunPod

__all__ = ["CLOUDS", "STATES", "AuthError", "Instance", "LaunchSpec", "NoCapacity", "NotFound", "Provider",
           "ProviderError", "ProviderTimeout", "api_key", "get_provider", "launch_table"]

CLOUDS = ("runpod", "lambda")


def get_provider(cloud: str) -> Provider:
    """The client for `cloud` (runpod | lambda), with its key from the environment."""
    if cloud == "runpod":
        return RunPod.from_env()
    if cloud == "lambda":
        return LambdaCloud.from_env()
    raise TunebookError(f"unknown cloud '{cloud}'", fix="Use --cloud runpod or --cloud lambda.")
