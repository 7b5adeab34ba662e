"""tunebook: version-controlled, declarative fine-tuning of open LLMs on top of Axolotl."""

__version__ = "0.1.0"
