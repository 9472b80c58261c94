"""artifact_spotting: self-supervised features by learning to spot artifacts."""

__version__ = "0.1.0"
