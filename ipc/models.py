"""The model providers a ``[models.<name>]`` entry may name: one list for the daemon, which checks the
configuration at start (``labd serve --check``), and the runner, which builds the ag2 model config."""

from __future__ import annotations

__all__ = ["PROVIDERS", "PROVIDER_NAMES"]

#: provider -> (module, class) of its ag2 model config (imported by the runner only)
PROVIDERS: dict[str, tuple[str, str]] = {
    "openai": ("ag2.config", "OpenAIConfig"),
    "anthropic": ("ag2.config", "AnthropicConfig"),
    "gemini": ("ag2.config", "GeminiConfig"),
    "ollama": ("ag2.config", "OllamaConfig"),
    "mistral": ("ag2.config", "MistralConfig"),
    "bedrock": ("ag2.config", "BedrockConfig"),
    "xai": ("ag2.config", "XAIConfig"),
}
#: every provider a model entry may name: the offline scripted model, then the real ones
PROVIDER_NAMES: tuple[str, ...] = ("offline", *PROVIDERS)
