"""The root of every error Learning Pilot raises on purpose.

The tree (adapters translate third-party exceptions into these at their boundary, ``raise X(...) from exc``)::

    PilotError
    ├── ProviderError                 a GPU provider failed (tools/gpu)
    │   ├── ProviderUnavailable       transient: 429, 5xx, timeouts; safe to retry later
    │   ├── OfferUnavailable          the offer was taken or is gone; choose another
    │   └── LaunchFailed              the provider refused to start the instance
    ├── ArtifactError                 the artifact store failed (tools/artifacts)
    │   ├── ArtifactNotFound
    │   └── IntegrityError            a sha256 mismatch, a pickled file, a path traversal
    │       └── ArtifactTooLarge      larger than the caller's limit (checked before downloading)
    ├── DeployError                   a serving target refused or failed (tools/serving)
    ├── NotificationError             Slack or another notifier failed (tools/slack)
    ├── LlmError                      a model call through litellm failed or was refused (tools/llm)
    │   ├── LlmUnavailable            transient: rate limit, 5xx, connection; the policy decides alone
    │   └── LlmTimeout                the model did not answer within its time limit
    └── (pilot/errors.py adds the control-plane errors: config, store transitions, approvals)

``jobs/`` does not import this: it runs on rented hosts and is self-contained.
"""

from __future__ import annotations


class PilotError(Exception):
    """Root of all deliberate Learning Pilot errors."""


class ProviderError(PilotError):
    """A GPU provider call failed."""


class ProviderUnavailable(ProviderError):
    """Transient provider failure (rate limit, 5xx, timeout). Retrying later is safe."""


class OfferUnavailable(ProviderError):
    """The chosen offer cannot be rented any more."""


class LaunchFailed(ProviderError):
    """The provider did not start the instance. Any instance it created anyway was destroyed first."""


class ArtifactError(PilotError):
    """The artifact store failed."""


class ArtifactNotFound(ArtifactError):
    """No artifact under that key."""


class IntegrityError(ArtifactError):
    """An artifact failed verification: wrong sha256, unsafe format or unsafe path."""


class ArtifactTooLarge(IntegrityError):
    """An artifact is larger than the caller accepts; refused from its stored size before it is downloaded."""


class DeployError(PilotError):
    """A serving target refused or failed to load an adapter."""


class NotificationError(PilotError):
    """A notifier (Slack) failed."""


class LlmError(PilotError):
    """A model call failed (bad request, authentication, an answer litellm could not parse)."""


class LlmUnavailable(LlmError):
    """Transient model failure (rate limit, 5xx, connection). The deterministic policy decides meanwhile."""


class LlmTimeout(LlmError):
    """The model did not answer within its time limit."""
