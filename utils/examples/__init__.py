"""Helpers the examples need: the VOC palette (ERFNet), the sliced Wasserstein distance (DCGAN), replay memory (DQN),
FLOPs and parameter counts (CondenseNet; any model)."""
