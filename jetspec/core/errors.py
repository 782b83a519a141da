"""User-facing errors.

Every error a user can cause (a bad config field, a missing checkpoint, a budget the cache cannot
hold, an empty prompt, ...) is a `JetSpecError` whose message is ONE line naming the problem and
what is allowed. The CLI prints it as `jetspec: error: <message>` and exits with status 2; the
Python API raises it unchanged.
"""


class JetSpecError(Exception):
    """A problem the user can fix; the message is one line."""

    # where a generation failed: the `GenerationResult` of what it had committed (nothing is lost)
    partial: object | None = None


class ConfigError(JetSpecError):
    """A config names an unknown implementation, field or value."""


class IncompatibleError(JetSpecError):
    """Chosen components cannot work together (a capability is missing)."""


class CapacityError(JetSpecError):
    """A sequence or draft budget does not fit the KV cache or the model's context."""


class CheckpointError(JetSpecError):
    """A model or head checkpoint is missing, corrupt, or made for another target."""


class InputError(JetSpecError):
    """A prompt or other run input is unusable (e.g. empty)."""


class PluginError(JetSpecError):
    """A plugin failed to load or registered something invalid."""
