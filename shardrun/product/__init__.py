"""A run's product: the trained network exported, used and measured."""
