"""Sites: the model surgery that applies a selection at one place in a model."""
