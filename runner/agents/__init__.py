"""ag2 integration: models from configuration, the offline scripted model, automatic tracking, pricing."""

from runner.agents.factory import AgentFactory, ModelError

__all__ = ["AgentFactory", "ModelError"]
