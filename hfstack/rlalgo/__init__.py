"""The reinforcement-learning pieces hfstack adds to TRL: PPO with a value head (TRL removed its
PPOTrainer), the verifiable-task reward functions, and the reward-hacking watch."""
