"""ag2 integration: models from configuration, the offline scripted model, automatic tracking, pricing."""

from labd.runner.agents.factory import AgentFactory, ModelError

__all__ = ["AgentFactory", "ModelError"]
