"""Studies on trained models: how faithful their explanations are, and what they show."""
