"""Helpers one example needs: the VOC palette (ERFNet), the sliced Wasserstein distance (DCGAN), replay memory (DQN)."""
