"""Turn search into training data: step labels for reward models (and, later, SFT and preference sets)."""
