"""Every stack setting, read once, validated, and frozen.

- schema.py: the one list of settings (type, default, allowed values, when it applies, secret, doc,
  example) and how to add one; kinds.py and shapes.py: the kinds of values; facts.py: the facts
  values are checked against (AWS regions and instance types, reserved names).
- load.py: `load_settings()`, the only reader of the stack config. It runs before any resource is
  registered and raises one `SettingsError` listing every problem, each as `<key>: <what is wrong>.
  Fix: <pulumi config line>` whose fix itself validates.
- model.py: the frozen settings the components receive.
- reference.py: docs/configuration.md, generated from the schema.
"""

from components.paths import CONFIGS_DIR
from components.settings.facts import (BACKUP_TARGETS, CLOUDFLARE_HTTPS_PORTS, KNOWN_BRIDGES, LEGACY_POSTGRES_MAJOR,
                                       MAX_HOSTNAME_LENGTH, MIN_CONTAINER_MEMORY_MB, NON_PUBLIC_SUFFIXES,
                                       NON_ROUTABLE_NETWORKS, PROJECT, SIGNAL_LOCAL_CONTAINERS, SIGNAL_SUBDOMAINS,
                                       SMTP_TLS_MODES, TELEGRAM_API_ID_MAX, VOLUME_NAMINGS, arm_instance_type, cidr_problem, known_containers,
                                       memory_mb, non_public_domain, non_routable_ipv4, supported_signal_refs,
                                       valid_git_ref)
from components.settings.keys import unknown_key_problems
from components.settings.load import (INSECURE_REGISTRATION_KEY, TWILIO_KEYS, check, given_config_keys,
                                      internet_facing_reasons, load_settings, postgres_image_major,
                                      postgres_upgrade_steps, worker_containers)
from components.settings.model import (BackupSettings, EdgeSettings, MatrixSettings, MonitoringSettings,
                                       PostgresSettings, Settings, SettingsError, SignalSettings, SmtpSettings)
from components.settings.schema import CONFIG_KEYS, SCHEMA, SETTINGS, Setting
from components.settings.shapes import SIGNAL_TABLE_SUFFIX_RE


def stack_tags(stack: str) -> dict[str, str]:
    """The tags the AWS provider puts on every resource (__main__.py); a table `signal-restore` makes
    gets them too, or adopting it would differ from the program."""
    return {"commstack:project": PROJECT, "commstack:stack": stack}


# The config reference's old name for a setting's entry.
ConfigKey = Setting

__all__ = [
    "BACKUP_TARGETS", "CLOUDFLARE_HTTPS_PORTS", "CONFIGS_DIR", "CONFIG_KEYS", "ConfigKey", "INSECURE_REGISTRATION_KEY",
    "KNOWN_BRIDGES", "LEGACY_POSTGRES_MAJOR", "MAX_HOSTNAME_LENGTH", "MIN_CONTAINER_MEMORY_MB", "NON_PUBLIC_SUFFIXES",
    "NON_ROUTABLE_NETWORKS", "PROJECT", "SCHEMA", "SETTINGS", "SIGNAL_LOCAL_CONTAINERS", "SIGNAL_SUBDOMAINS",
    "SIGNAL_TABLE_SUFFIX_RE", "SMTP_TLS_MODES", "TELEGRAM_API_ID_MAX", "TWILIO_KEYS", "VOLUME_NAMINGS", "BackupSettings", "EdgeSettings",
    "MatrixSettings", "MonitoringSettings", "PostgresSettings", "SmtpSettings", "Setting", "Settings", "SettingsError", "SignalSettings",
    "arm_instance_type", "check", "cidr_problem", "given_config_keys", "internet_facing_reasons",
    "known_containers", "load_settings", "memory_mb", "non_public_domain", "non_routable_ipv4",
    "postgres_image_major", "postgres_upgrade_steps", "stack_tags", "supported_signal_refs",
    "unknown_key_problems", "valid_git_ref", "worker_containers",
]
