"""obsml around model servers that have no place for a middleware of their own.

One module per server, each importing that server only when used (README, "Model servers"):
``obsml.integrations.azureml`` (Azure ML's inference server), ``obsml.integrations.mlflow``,
``obsml.integrations.kserve`` and ``obsml.integrations.bentoml``.
"""
