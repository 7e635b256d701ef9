"""AWS AppConfig for Signal-Server's dynamic configuration.

v9.81.0 reads it with appconfigdata StartConfigurationSession/GetLatestConfiguration
(storage/DynamicConfigurationManager.java) and will not start without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from components.common import child, to_yaml

# The smallest valid DynamicConfiguration: every field has a default except captcha.scoreFloor
# (DynamicCaptchaConfiguration.java: @NotNull, 0..1). With `{}` Signal-Server rejects the document and never
# finishes starting (found by tests/integration/test_signal_jvm.py). No captcha provider is configured, so clients
# qualify for a code by push challenge; the floor only matters once an operator adds one.
DEFAULT_DYNAMIC_CONFIG: dict = {"captcha": {"scoreFloor": 0.5}}


@dataclass
class DynamicConfigArgs:
    document: Optional[dict] = None


class DynamicConfig(pulumi.ComponentResource):
    application_name: pulumi.Output
    environment_name: pulumi.Output
    profile_name: pulumi.Output
    profile_arn: pulumi.Output  # the only resource the instance may read

    def __init__(self, name: str, args: DynamicConfigArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("commstack:signal:DynamicConfig", name, None, opts)
        import pulumi_aws as aws  # AWS target only: the docker target never loads the SDK

        app = aws.appconfig.Application(f"{name}-app", name=name, opts=child(self))
        env = aws.appconfig.Environment(f"{name}-env", application_id=app.id, name="main", opts=child(self))
        profile = aws.appconfig.ConfigurationProfile(f"{name}-profile", application_id=app.id, name="dynamic",
                                                     location_uri="hosted", opts=child(self))
        version = aws.appconfig.HostedConfigurationVersion(
            f"{name}-version", application_id=app.id, configuration_profile_id=profile.configuration_profile_id,
            content_type="application/x-yaml", content=to_yaml(args.document or DEFAULT_DYNAMIC_CONFIG),
            opts=child(self))
        aws.appconfig.Deployment(
            f"{name}-deployment", application_id=app.id, environment_id=env.environment_id,
            configuration_profile_id=profile.configuration_profile_id, configuration_version=version.version_number.apply(str),
            deployment_strategy_id="AppConfig.AllAtOnce", opts=child(self))
        self.application_name = app.name
        self.environment_name = env.name
        self.profile_name = profile.name
        self.profile_arn = pulumi.Output.all(app.arn, env.environment_id, profile.configuration_profile_id).apply(
            lambda a: f"{a[0]}/environment/{a[1]}/configuration/{a[2]}")
        self.register_outputs({"profile_arn": self.profile_arn})
