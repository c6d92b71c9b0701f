"""tirl: tool-integrated reinforcement learning (ReTool / ToRL) that reads in an afternoon."""

__version__ = "0.1.0"
