"""Drift monitoring (`biomx drift`, docs/trust.md): new inputs against a run's training data by
input statistics, the model's embeddings and its predictions, with p-values and a verdict."""
